"""Search: index, query understanding, service, web page."""
