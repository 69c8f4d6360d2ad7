"""Descriptions written as HTML (Shopify's Body, Google feeds' CDATA, WooCommerce and Magento
exports) as the plain text the text tower reads."""
from __future__ import annotations

import re
from html.parser import HTMLParser

# A tag (<p>, </li>, <br/>, <!-- -->) or a character reference (&amp; &#233; &#xe9;).
_HTML_MARK = re.compile(r"</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>]*)?/?>|<!--|&(?:[A-Za-z]+|#[0-9]+|#[xX][0-9A-Fa-f]+);")


class _HtmlText(HTMLParser):
    BLOCKS = {"p", "br", "div", "li", "ul", "ol", "tr", "td", "h1", "h2", "h3", "h4", "h5", "h6"}
    HIDDEN = {"script", "style"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag, attrs) -> None:
        if tag in self.HIDDEN:
            self.hidden += 1
        elif tag in self.BLOCKS:
            self.parts.append(" ")  # block elements separate words: "<p>a</p><p>b</p>" is "a b"

    def handle_endtag(self, tag) -> None:
        if tag in self.HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif tag in self.BLOCKS:
            self.parts.append(" ")

    def handle_data(self, data) -> None:
        if not self.hidden:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    """Visible text of an HTML fragment, whitespace collapsed ("<p>Soft&nbsp;cotton</p>" -> "Soft cotton")."""
    parser = _HtmlText()
    parser.feed(html)
    parser.close()
    return " ".join("".join(parser.parts).split())


def looks_like_html(text: str) -> bool:
    """Whether `text` holds a tag or a character reference (plain text such as "a < b" does not)."""
    return _HTML_MARK.search(text) is not None


def plain_text(text: str) -> str:
    """`text` as plain text: HTML converted (see `html_to_text`), anything else left as it is."""
    return html_to_text(text) if looks_like_html(text) else text


def description_text(text: str) -> str:
    """A description cell as plain text: WooCommerce writes line breaks as a literal `\\n`,
    shops write HTML (see `plain_text`)."""
    return plain_text(text.replace("\\n", "\n"))
