"""Adapter for an invoice-line log (UCI Online Retail's layout): one file fills `products` and `events`.

Each line `InvoiceNo, StockCode, Description, Quantity, InvoiceDate, UnitPrice, CustomerID, Country`
becomes:
- a product row (StockCode -> product_id, Description -> title, UnitPrice -> price in GBP): the
  file is in date order and the latest row of a key wins, so the latest description and price
  win; the other descriptions a code was sold under are kept (attributes.title_variants, see
  ray_app.ingest.resolve.keep_variants). Codes that are not products (postage, fees, discounts,
  manual adjustments, vouchers) are quarantined with the reason and stay out of the catalogue.
- an event row: a purchase, or a return when the invoice number starts with "C" (a cancellation;
  linked to the purchase it cancels by ray_app.ingest.resolve.link_returns); the invoice is the
  session, the customer the user (no customer: an anonymous session), the country the locale.
  The event id derives from the whole line, so an exact duplicate line counts as a duplicate.
  Stock adjustments (a negative quantity outside a cancellation, a zero-price line without a
  customer, "A" bad-debt invoices) are quarantined with the reason.

Nothing is dropped silently: every line is read once per table, so for each table
read = accepted + quarantined + duplicates (products: a code named again is a duplicate).
"""
from __future__ import annotations

import re
from typing import Any

from ray_app.ids import stable_id
from ray_app.ingest.clean import Reject
from ray_app.ingest.fields import _missing

SOURCE_NAME = "online-retail"
CURRENCY = "GBP"
SHOP_LOCALE = "gb"
# Stock codes that are not products, with why; vouchers are money, not items a shopper is recommended.
NON_PRODUCT_CODES: dict[str, str] = {
    "POST": "postage", "DOT": "postage", "C2": "carriage", "M": "manual adjustment", "D": "discount",
    "S": "samples", "B": "bad-debt adjustment", "BANK CHARGES": "bank charges", "AMAZONFEE": "marketplace fee",
    "CRUK": "charity commission",
}
NON_PRODUCT_PATTERNS: tuple[tuple[re.Pattern, str], ...] = ((re.compile(r"^gift_\d+_\d+$", re.I), "gift voucher"),)
# Country names as the log writes them -> ISO 3166 alpha-2 (lower case, as `locale` is stored).
COUNTRIES: dict[str, str] = {
    "united kingdom": "gb", "germany": "de", "france": "fr", "eire": "ie", "spain": "es", "netherlands": "nl",
    "belgium": "be", "switzerland": "ch", "portugal": "pt", "australia": "au", "norway": "no", "italy": "it",
    "channel islands": "je", "finland": "fi", "cyprus": "cy", "sweden": "se", "austria": "at", "denmark": "dk",
    "japan": "jp", "poland": "pl", "israel": "il", "usa": "us", "hong kong": "hk", "singapore": "sg",
    "iceland": "is", "canada": "ca", "greece": "gr", "malta": "mt", "united arab emirates": "ae", "rsa": "za",
    "lebanon": "lb", "lithuania": "lt", "brazil": "br", "czech republic": "cz", "bahrain": "bh", "saudi arabia": "sa",
    "european community": "eu", "unspecified": "unknown",
}
# How a quarantined raw line reads: its customer and invoice redacted, the rest under the table's names.
RAW_COLUMNS = {"CustomerID": "user_id", "InvoiceNo": "session_id", "StockCode": "product_id", "Description": "title",
               "Quantity": "quantity", "InvoiceDate": "timestamp", "UnitPrice": "value", "Country": "locale"}


def country_locale(country: Any) -> str:
    """The locale of a country as the log names it; an unlisted name becomes its lower-case slug."""
    name = "" if _missing(country) else str(country).strip().lower()
    return COUNTRIES.get(name) or re.sub(r"[^a-z0-9]+", "-", name).strip("-") or "unknown"


def non_product_reason(code: str) -> str:
    """Why a stock code is not a product ("" for a product)."""
    if code.upper() in NON_PRODUCT_CODES:  # "m" is the manual adjustment "M" too
        return NON_PRODUCT_CODES[code.upper()]
    return next((why for pattern, why in NON_PRODUCT_PATTERNS if pattern.match(code)), "")


def _code(rec: dict) -> str:
    code = "" if _missing(rec.get("StockCode")) else str(rec["StockCode"]).strip()
    if not code:
        raise Reject("product_id", "StockCode is missing")
    return code


def _customer(rec: dict) -> str:
    value = rec.get("CustomerID")
    if _missing(value):
        return ""
    text = str(value).strip()
    return text[:-2] if text.endswith(".0") else text  # the CSV export wrote ids as floats ("17850.0")


def adjustment_reason(rec: dict) -> tuple[str, str]:
    """(field, why) when a line is a stock adjustment rather than a sale, else ("", "").

    Adjustment lines carry a note in the description ("damages", "thrown away", "?"), so they
    name neither a sale nor the product: both tables keep them out, with the reason."""
    invoice = "" if _missing(rec.get("InvoiceNo")) else str(rec["InvoiceNo"]).strip()
    if not invoice:
        return "session_id", "InvoiceNo is missing"
    if invoice[0] in "Aa":
        return "session_id", "an 'A' invoice is a bad-debt adjustment, not a sale"
    try:
        units = int(float(rec.get("Quantity")))
    except (TypeError, ValueError):
        units = None  # the cleaner names the field
    if units is not None and units < 0 and invoice[0] not in "Cc":
        return "quantity", f"'{units}' units outside a cancellation: a stock adjustment (damaged, lost, found), not a sale"
    price = rec.get("UnitPrice")
    if not _customer(rec) and (_missing(price) or not _positive(price)):
        return "value", "a zero-price line without a customer: a stock adjustment, not a sale"
    return "", ""


def retail_product(rec: dict, source: str) -> list[dict]:
    """The product an invoice line names."""
    code = _code(rec)
    why = non_product_reason(code)
    kept = {"product_id": code, "title": rec.get("Description")}
    if why:
        raise Reject("product_id", f"stock code {code!r} is not a product ({why}): kept out of the catalogue", record=kept)
    field, adjustment = adjustment_reason(rec)
    if field:
        raise Reject(field, f"{adjustment}; its description is a note, not the product's name", record=kept)
    title = rec.get("Description")
    if not _missing(title) and not re.search(r"[A-Za-z]", str(title)):
        raise Reject("title", "a description without a letter is a note, not the product's name", record=kept)
    price = rec.get("UnitPrice")
    return [{"product_id": code, "title": title,
             # a zero-price line (a free sample, an adjustment) says nothing about what the product costs
             "price": price if not _missing(price) and _positive(price) else None,
             "currency": CURRENCY, "locale": SHOP_LOCALE, "updated_at": rec.get("InvoiceDate")}]


def _positive(value: Any) -> bool:
    try:
        return float(value) > 0
    except (TypeError, ValueError):
        return True  # not a number: the cleaner rejects it with the reason


def retail_event(rec: dict, source: str) -> list[dict]:
    """The purchase or return an invoice line records."""
    code = _code(rec)
    why = non_product_reason(code)
    if why:
        raise Reject("product_id", f"stock code {code!r} is not a product ({why}): not a shopper's event")
    field, adjustment = adjustment_reason(rec)
    if field:
        raise Reject(field, adjustment)
    invoice = str(rec["InvoiceNo"]).strip()
    quantity = rec.get("Quantity")
    # the invoice fixes the customer, so the id needs no customer id (an unkeyed hash of one would leak it)
    line_id = stable_id(SOURCE_NAME, invoice, code, rec.get("Description"), quantity, rec.get("InvoiceDate"),
                        rec.get("UnitPrice"), rec.get("Country"))
    return [{"event_id": line_id, "event_type": "return" if invoice[0] in "Cc" else "purchase", "user_id": _customer(rec),
             "session_id": invoice, "product_id": code, "timestamp": rec.get("InvoiceDate"),
             "quantity": quantity, "value": rec.get("UnitPrice"), "locale": country_locale(rec.get("Country"))}]


def retail_sources(path: str) -> list:
    """products (derived from the lines) first, then events: one parse of each line fills both."""
    from ray_app.ingest.adapters import Source, list_files
    from ray_app.ingest.pipeline import known_format

    files = [f for f in list_files(path) if known_format(f)]
    if not files:
        raise FileNotFoundError(f"{path}: no invoice-line file (CSV with InvoiceNo, StockCode, Description, "
                                "Quantity, InvoiceDate, UnitPrice, CustomerID, Country) found")
    # the identity mapping of the canonical names keeps user renames off the adapter's output;
    # the raw-column mapping lets quarantine redact a raw line's customer and invoice
    return [Source("products", files, retail_product, dict(RAW_COLUMNS), derived=True),
            Source("events", files, retail_event, dict(RAW_COLUMNS))]
