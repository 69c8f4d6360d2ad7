"""Grocery Store Dataset (Klasson et al., WACV 2019): 81 products, each one web shot and its photos in stores.

Layout (SRC is the data set folder or its ``dataset/`` folder)::

    dataset/classes.csv                     Class Name, Class ID, Coarse Class Name, Coarse Class ID,
                                            Iconic Image Path, Product Description Path (paths start with "/")
    dataset/{train,val,test}.txt            "path, fine id, coarse id" per in-store photo
    dataset/iconic-images-and-descriptions/<Top>/<Coarse>[/<Fine>]/<Fine>_{Iconic.jpg,Description.txt,Information.txt}

One product per fine class: its iconic image is the merchant shot, its in-store photos are
customer shots tagged with the data set's own split (`ImageRef.split`), its English description is
the text. The category path is Top > Coarse > Fine, without the Fine level when the fine class is
its coarse class (``Fruit > Banana``). Labels come from classes.csv and the photo lists, never from
folder names (Brown-Cap-Mushroom photos sit at different depths in train and test). Packages carry
a brand: the leading words of the class name that the manufacturer line of ``*Information.txt``
starts with (``GOD MORGON , 1l`` -> God-Morgon; ``ARLA KO , 1l`` -> Arla).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from catalogclip.catalog.problems import ProblemLog
from catalogclip.catalog.readers.base import READERS, ReaderOptions, Source, csv_rows
from catalogclip.catalog.schema import products_from_rows

NAME, CLASS_ID, COARSE = "Class Name (str)", "Class ID (int)", "Coarse Class Name (str)"
ICONIC, DESCRIPTION = "Iconic Image Path (str)", "Product Description Path (str)"
COLUMNS = (NAME, CLASS_ID, COARSE, ICONIC, DESCRIPTION)
PHOTO_LISTS = ("train", "val", "test")
MANUFACTURER = "manufacturer"
#: top-level groups whose products are branded packages
BRANDED_TOPS = ("Packages",)


def dataset_folder(src: Path) -> Path:
    """The folder holding classes.csv: SRC itself or SRC/dataset."""
    for folder in (src, src / "dataset"):
        if (folder / "classes.csv").is_file():
            return folder
    raise FileNotFoundError(f"{src}: no classes.csv here or in {src / 'dataset'} (expected the Grocery Store Dataset)")


def inside(root: Path, relative: str) -> str | None:
    """`relative` (leading "/" allowed) as a path under `root`, or None when it reaches outside it."""
    path = relative.strip().lstrip("/")
    if not path or not (root / path).resolve().is_relative_to(root.resolve()):
        return None
    return path


def humanise(name: str) -> str:
    return name.replace("-", " ").strip()


def brand_from_manufacturer(class_name: str, manufacturer: str) -> str:
    """The leading hyphen-separated words of the class name that begin the manufacturer's name."""
    words, maker = class_name.split("-"), manufacturer.replace(",", " ").casefold().split()
    n = 0
    while n < min(len(words), len(maker)) and words[n].casefold() == maker[n]:
        n += 1
    return "-".join(words[:n])


def manufacturer_line(folder: Path) -> str:
    """The "Manufacturer and volume:" value of the product's information file ("" if none);
    one class names it ``<Fine>-Information.txt``, one starts with a BOM."""
    for info in sorted(folder.glob("*Information.txt")):
        for line in info.read_text(encoding="utf-8-sig", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip().casefold().startswith(MANUFACTURER):
                return value.strip()
    return ""


def read_text(root: Path, relative: str, file: Path, line: int, problems: ProblemLog) -> str:
    path = inside(root, relative)
    if path is None:
        problems.add("bad path", file, line, f"field '{DESCRIPTION}': '{relative}' is outside the data set")
        return ""
    try:
        return " ".join((root / path).read_text(encoding="utf-8-sig").split())
    except (OSError, UnicodeDecodeError) as exc:
        problems.add("missing text", file, line, f"field '{DESCRIPTION}': {relative}: {exc}")
        return ""


def _classes(root: Path, problems: ProblemLog) -> Iterator[tuple[int, int, dict]]:
    """(line, class id, product dict without its photos) per row of classes.csv."""
    csv_path = root / "classes.csv"
    for line, row in csv_rows(csv_path, COLUMNS, problems):
        name, coarse = row[NAME].strip(), row[COARSE].strip()
        try:
            class_id = int(row[CLASS_ID])
        except ValueError:
            problems.add("malformed row", csv_path, line, f"field '{CLASS_ID}' is not an integer: {row[CLASS_ID]!r}")
            continue
        iconic = inside(root, row[ICONIC])
        if iconic is None or len(Path(iconic).parts) < 3:
            problems.add("bad path", csv_path, line, f"field '{ICONIC}': '{row[ICONIC]}' is not an image under the data set")
            continue
        top = Path(iconic).parts[1]  # iconic-images-and-descriptions/<Top>/...
        path = [top, coarse] + ([name] if name != coarse else [])
        brand = brand_from_manufacturer(name, manufacturer_line((root / iconic).parent)) if top in BRANDED_TOPS else ""
        yield line, class_id, {
            "id": name,
            "title": humanise(name),
            "description": read_text(root, row[DESCRIPTION], csv_path, line, problems),
            "images": [{"path": iconic, "source": "merchant"}],
            "attributes": {"brand": brand} if brand else {},
            "category_path": [humanise(level) for level in path],
        }


def _photos(root: Path, known: set[int], problems: ProblemLog) -> Iterator[tuple[int, dict]]:
    """(fine class id, customer image) for every listed photo; bad lines are logged and skipped."""
    for split in PHOTO_LISTS:
        listing = root / f"{split}.txt"
        if not listing.is_file():
            problems.add("missing file", listing, None, f"no {split} photo list: its photos are left out")
            continue
        for line_no, line in enumerate(listing.read_text(encoding="utf-8-sig").splitlines(), start=1):
            if not line.strip():
                continue
            fields = [f.strip() for f in line.split(",")]
            if len(fields) != 3 or not fields[1].isdigit():
                problems.add("malformed row", listing, line_no, "expected 'path, fine id, coarse id'")
                continue
            path, fine = inside(root, fields[0]), int(fields[1])
            if path is None:
                problems.add("bad path", listing, line_no, f"field 'path': '{fields[0]}' is outside the data set")
            elif fine not in known:
                problems.add("malformed row", listing, line_no, f"field 'fine id': no class {fine} in classes.csv")
            else:
                yield fine, {"path": path, "source": "customer", "split": split}


@READERS.register("grocery-store")
def read_grocery_store(src: Path, problems: ProblemLog, options: ReaderOptions) -> Source:
    """SRC is the data set folder (holding ``dataset/``) or its ``dataset/`` folder."""
    root = dataset_folder(src)
    classes = list(_classes(root, problems))
    by_class = {class_id: product for _, class_id, product in classes}
    for fine, image in _photos(root, set(by_class), problems):
        by_class[fine]["images"].append(image)
    rows = ((line, product) for line, _, product in classes)
    return Source(root / "classes.csv", root, products_from_rows(rows, root / "classes.csv", problems))
