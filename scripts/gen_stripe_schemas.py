#!/usr/bin/env python3
"""Generates the declarative Stripe stream schemas, `schemas/stripe/<stream>.json`.

Input: Stripe's example objects (the `fixtures3.json` that stripe-mock ships,
`{"resources": {"charge": {...}, ...}}`). Output: one `StreamSchema` file per stream (see
`connectors/sdk/src/schema.rs`). The JSON files are committed; this script documents how
they were made and can be re-run:

    python3 scripts/gen_stripe_schemas.py [--fixtures PATH] [--out DIR]
    python3 scripts/gen_stripe_schemas.py --check     # validate, and diff against DIR

Standard library only (Python 3.11).

Column naming follows Segment's cloud-source rules, which the runtime's converter
(`connectors/sdk/src/convert.rs`) also applies to the data it meets, so the two agree:

* A nested object is flattened into `parent_child` columns, recursively
  (`billing_details.address.city` -> `billing_details_address_city`).
* A column declared at a path captures the whole value there. So a free-form map (keys are
  user data, see FREE_FORM_*) is declared as one `json` column and is never flattened.
* Arrays, and Stripe sub-list objects (`{"object": "list", "data": [...], ...}`:
  `charges.refunds`, `invoices.lines`, `subscriptions.items`, ...), are one `json` column
  named after the field.
* An expandable reference is a `string` column holding the id; when the data carries the
  expanded object the converter keeps its `id`. Only `transfer_data.destination` comes as
  an `{id, object}` stub in the fixture (EXPANDABLE_OBJECTS). A full embedded object that
  is not expandable (`charges.source`, `customers.discount`, `subscription_items.price` /
  `.plan`) is flattened like any object, so its id lands in `<field>_id`.
* Types come from the fixture value (int -> integer, float -> number, ...); a Unix-seconds
  integer (or null) in a timestamp-named field is a `timestamp`; a null is typed from its
  Stripe API meaning (NULL_TYPES), `string` when nothing better is known.
* An empty object `{}` in the fixture is a Stripe object whose optional fields stripe-mock
  left out. Where Stripe documents its shape, its leaf columns are declared (KNOWN_SHAPES);
  otherwise no column is declared (LEFT_TO_DISCOVERY) and the runtime adds the flattened
  columns when it first meets them. Declaring such an object `json` would stop the
  converter from flattening it, which is not what Segment does.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_FIXTURES = Path("/work/shared/fixtures/stripe/fixtures3.json")
DEFAULT_OUT = REPO / "schemas" / "stripe"

# stream name -> (fixture resource, kind)
STREAMS: list[tuple[str, str, str]] = [
    ("customers", "customer", "objects"),
    ("charges", "charge", "objects"),
    ("invoices", "invoice", "objects"),
    ("invoice_items", "invoiceitem", "objects"),
    ("subscriptions", "subscription", "objects"),
    ("subscription_items", "subscription_item", "objects"),
    ("products", "product", "objects"),
    ("prices", "price", "objects"),
    ("plans", "plan", "objects"),
    ("coupons", "coupon", "objects"),
    ("payment_intents", "payment_intent", "objects"),
    ("refunds", "refund", "objects"),
    ("disputes", "dispute", "objects"),
    ("payouts", "payout", "objects"),
    ("balance_transactions", "balance_transaction", "objects"),
    ("events", "event", "events"),
]

SYSTEM_COLUMNS = ("received_at", "uuid_ts", "is_deleted", "_rescued_data")
TYPES = ("string", "integer", "number", "boolean", "timestamp", "json")

# --- free-form maps: one `json` column, never flattened -------------------------------------
# Keys are user (or Stripe-internal, unstable) data, so flattening would mint a column per key.
FREE_FORM_LEAVES = {
    "metadata",  # every object's metadata, and nested price_metadata, plan_metadata, ...
    "currency_options",  # prices/coupons: {currency code: options}, with expand[]
    "invoice_credit_balance",  # customers: {currency code: amount}, with expand[]
    "use_stripe_sdk",  # payment_intents.next_action.use_stripe_sdk: shape "subject to change"
}
FREE_FORM_SUFFIXES = ("_metadata",)
# Whole paths per stream.
FREE_FORM_PATHS = {
    "events": {
        "data_object",  # the event's object, any type: kept whole
        "data_previous_attributes",  # the changed fields' old values
    },
}

# --- expandable references that the fixture shows as an {id, object} stub -------------------
EXPANDABLE_OBJECTS = {"transfer_data_destination"}

# Expandable references (string ids, or the object when expanded; the converter keeps the
# id). Used for descriptions; a null one is typed `string`.
REFERENCES = {
    "application": "Connect application",
    "application_fee": "application fee",
    "balance_transaction": "balance transaction",
    "charge": "charge",
    "customer": "customer",
    "default_payment_method": "default payment method",
    "default_price": "default price",
    "default_source": "default payment source",
    "destination": "bank account or card paid out to",
    "failure_balance_transaction": "balance transaction of the failure",
    "invoice": "invoice",
    "latest_charge": "latest charge",
    "latest_invoice": "latest invoice",
    "latest_revision": "latest revision of the invoice",
    "on_behalf_of": "account the payment is made on behalf of",
    "original_payout": "original payout",
    "payment_intent": "payment intent",
    "payment_method": "payment method",
    "pending_setup_intent": "pending setup intent",
    "product": "product",
    "reversed_by": "reversing payout",
    "review": "review",
    "schedule": "subscription schedule",
    "source": "source object of the transaction",
    "source_transfer": "transfer that created the charge",
    "source_transfer_reversal": "transfer reversal of the refund",
    "subscription": "subscription",
    "tax_code": "tax code",
    "test_clock": "test clock",
    "transfer_reversal": "transfer reversal",
    "transfer_data_destination": "destination account",
    "invoice_settings_default_payment_method": "default payment method for invoices",
    "from_invoice_invoice": "invoice revised",
    "shipping_cost_shipping_rate": "shipping rate",
    "parent_subscription_details_subscription": "subscription",
    "discount_customer": "customer of the discount",
    "discount_promotion_code": "promotion code",
    "discount_source_coupon": "coupon",
    "pending_update_discount_customer": "customer of the discount",
    "pending_update_discount_promotion_code": "promotion code",
    "pending_update_discount_source_coupon": "coupon",
    "price_product": "product of the price",
    "plan_product": "product of the plan",
}
# Dispute evidence file uploads (expandable File references).
for _f in (
    "cancellation_policy", "customer_communication", "customer_signature",
    "duplicate_charge_documentation", "receipt", "refund_policy", "service_documentation",
    "shipping_documentation", "uncategorized_file",
):
    REFERENCES[f"evidence_{_f}"] = "file upload"

REFERENCE_OVERRIDES = {("payment_intents", "source"): "payment source"}

DESCRIPTIONS = {
    ("events", "data_object"): "The object the event is about (any type), as JSON text.",
}

# --- numbers: Stripe documents these as decimals even where the example is whole -----------
NUMBER_COLUMNS = {
    "percent_off",
    "application_fee_percent",
    "exchange_rate",
    "transfer_data_amount_percent",
    "package_dimensions_height",
    "package_dimensions_length",
    "package_dimensions_weight",
    "package_dimensions_width",
}

# --- nulls in the fixture, typed from the Stripe API (not listed: string, or the rules) -----
NULL_TYPES = {
    # amounts and counts
    "amount_off": "integer",
    "application_fee_amount": "integer",
    "billing_cycle_anchor_config_hour": "integer",
    "billing_cycle_anchor_config_minute": "integer",
    "billing_cycle_anchor_config_month": "integer",
    "billing_cycle_anchor_config_second": "integer",
    "billing_thresholds_amount_gte": "integer",
    "billing_thresholds_usage_gte": "integer",
    "custom_unit_amount_maximum": "integer",
    "custom_unit_amount_minimum": "integer",
    "custom_unit_amount_preset": "integer",
    "price_custom_unit_amount_maximum": "integer",
    "price_custom_unit_amount_minimum": "integer",
    "price_custom_unit_amount_preset": "integer",
    "days_until_due": "integer",
    "ending_balance": "integer",
    "max_redemptions": "integer",
    "payment_method_details_card_amount_authorized": "integer",
    "payment_method_details_card_installments_plan_count": "integer",
    "plan_amount": "integer",
    "trial_period_days": "integer",
    "plan_trial_period_days": "integer",
    "recurring_trial_period_days": "integer",
    "price_recurring_trial_period_days": "integer",
    "source_amount": "integer",
    "transfer_data_amount": "integer",
    # booleans
    "billing_thresholds_reset_billing_cycle_anchor": "boolean",
    "pending_update_trial_from_plan": "boolean",
    "shippable": "boolean",
    # arrays
    "account_tax_ids": "json",
    "custom_fields": "json",
    "invoice_settings_custom_fields": "json",
    "invoice_settings_account_tax_ids": "json",
    "excluded_payment_method_types": "json",
    "payment_settings_payment_method_types": "json",
    "pending_update_subscription_items": "json",
    "total_pretax_credit_amounts": "json",
    "total_taxes": "json",
}

# --- empty objects in the fixture ------------------------------------------------------------
_ADDRESS = {k: "string" for k in ("city", "country", "line1", "line2", "postal_code", "state")}
_SHIPPING = {"address": _ADDRESS, "carrier": "string", "name": "string", "phone": "string",
             "tracking_number": "string"}
KNOWN_SHAPES = {
    "shipping": _SHIPPING,  # charges, customers, payment_intents
    "customer_shipping": _SHIPPING,  # invoices
    "shipping_details": _SHIPPING,  # invoices
    "fraud_details": {"stripe_report": "string", "user_report": "string"},  # charges
    "amount_details_tip": {"amount": "integer"},  # payment_intents
    "billing_mode_flexible": {"proration_discounts": "string"},  # subscriptions
}
# Structured Stripe objects, empty in the fixture, whose fields depend on the payment method
# type and are many: flattened by the runtime when they first appear.
LEFT_TO_DISCOVERY = {
    "payment_method_options",  # payment_intents
    "payment_settings_payment_method_options_acss_debit",
    "payment_settings_payment_method_options_konbini",
    "payment_settings_payment_method_options_payto",
    "payment_settings_payment_method_options_pix",
    "payment_settings_payment_method_options_sepa_debit",
    "payment_settings_payment_method_options_upi",
    "payment_settings_payment_method_options_us_bank_account",
    "evidence_enhanced_evidence",  # disputes
    "evidence_details_enhanced_eligibility",  # disputes
}

# --- columns not in the fixture that must be declared for the data to land right ------------
# (stream, insert after column or None for the end, name, type, description)
EXTRA_COLUMNS = [
    ("customers", None, "sources", "json",
     "Stripe list object of the customer's payment sources (with expand[]), as JSON text."),
    ("customers", None, "subscriptions", "json",
     "Stripe list object of the customer's subscriptions (with expand[]), as JSON text."),
    ("customers", None, "tax_ids", "json",
     "Stripe list object of the customer's tax ids (with expand[]), as JSON text."),
    ("customers", None, "invoice_credit_balance", "json",
     "Map of currency to invoice credit balance (with expand[]), as JSON text."),
    ("prices", None, "currency_options", "json",
     "Map of currency to price options (with expand[]), as JSON text."),
    ("subscription_items", None, "price_currency_options", "json",
     "Map of currency to price options (with expand[]), as JSON text."),
    ("coupons", None, "currency_options", "json",
     "Map of currency to amount_off options, as JSON text."),
    ("payment_intents", "next_action_type", "next_action_use_stripe_sdk", "json",
     "Stripe.js-only data of the next action; shape subject to change, kept as JSON text."),
    ("events", "data_object", "data_previous_attributes", "json",
     "For *.updated events: the changed fields' previous values, as JSON text."),
]

# Streams whose objects lack the `created` field the list endpoint filters on
# (`GET /v1/invoiceitems?created[gte]=...`): an invoice item's creation time is `date`.
CURSOR_NOT_A_COLUMN = {"invoice_items": "date"}

# --- timestamps ----------------------------------------------------------------------------
TIMESTAMP_LEAVES = {
    "created", "updated", "date", "available_on", "billing_cycle_anchor", "cancel_at",
    "current_period_end", "current_period_start", "due_by", "next_payment_attempt",
    "next_pending_invoice_item_invoice", "period_end", "period_start", "redeem_by",
    "trial_end", "trial_start",
}
# `start`/`end` are timestamps under these parents (`period.start`, `discount.end`).
TIMESTAMP_START_END_PARENTS = ("period", "discount")
# Free-text dates the account types in as dispute evidence: strings.
NOT_TIMESTAMP_COLUMNS = {"evidence_service_date", "evidence_shipping_date"}


def to_column_name(key: str) -> str:
    """Mirror of `tributary_sdk::schema::to_column_name`."""
    out: list[str] = []
    prev_lower_or_digit = False
    for c in key:
        if c.isascii() and c.isupper():
            if prev_lower_or_digit:
                out.append("_")
            out.append(c.lower())
            prev_lower_or_digit = False
        elif c.isascii() and (c.islower() or c.isdigit()):
            out.append(c)
            prev_lower_or_digit = True
        else:
            out.append("_")
            prev_lower_or_digit = False
    s = "".join(out)
    if not s or s[0].isdigit():
        s = "_" + s
    return s


COLUMN_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


def key_part(key: str) -> str:
    return key if COLUMN_NAME.match(key) else to_column_name(key)


def is_free_form(stream: str, name: str, leaf: str) -> bool:
    return (
        leaf in FREE_FORM_LEAVES
        or leaf.endswith(FREE_FORM_SUFFIXES)
        or name in FREE_FORM_PATHS.get(stream, ())
    )


def is_timestamp_name(name: str, leaf: str, parent: str) -> bool:
    if name in NOT_TIMESTAMP_COLUMNS:
        return False
    if leaf in TIMESTAMP_LEAVES or leaf.endswith("_at") or leaf.endswith("_date"):
        return True
    return leaf in ("start", "end") and parent.endswith(TIMESTAMP_START_END_PARENTS)


def is_list_object(v: dict) -> bool:
    return v.get("object") == "list" and "data" in v


class Builder:
    def __init__(self, stream: str, resource: str):
        self.stream = stream
        self.resource = resource
        self.columns: list[dict] = []
        self.notes: list[str] = []

    def add(self, name: str, ty: str, description: str | None = None) -> None:
        col = {"name": name, "type": ty}
        if description is None:
            description = self.describe(name, ty)
        if description:
            col["description"] = description
        self.columns.append(col)

    def describe(self, name: str, ty: str) -> str | None:
        if name == "id":
            noun = {"invoiceitem": "invoice item"}.get(self.resource, self.resource)
            return f"Unique identifier of the {noun.replace('_', ' ')}."
        if (self.stream, name) in DESCRIPTIONS:
            return DESCRIPTIONS[(self.stream, name)]
        if name in REFERENCES and ty == "string":
            what = REFERENCE_OVERRIDES.get((self.stream, name), REFERENCES[name])
            return f"ID of the {what} (an expanded object is stored as its id)."
        return None

    def walk(self, obj: dict, prefix: str, parent_leaf: str) -> None:
        for key, value in obj.items():
            leaf = key_part(key)
            name = f"{prefix}_{leaf}" if prefix else leaf
            self.field(name, leaf, parent_leaf, value)

    def field(self, name: str, leaf: str, parent: str, value) -> None:
        if is_free_form(self.stream, name, leaf):
            metadata = leaf == "metadata" or leaf.endswith("_metadata")
            self.add(name, "json", "Free-form key-value map, as JSON text." if metadata else None)
            return
        if isinstance(value, dict):
            if is_list_object(value):
                self.add(name, "json", "Stripe list object (data, has_more, url), as JSON text.")
            elif name in EXPANDABLE_OBJECTS:
                self.add(name, "string")
            elif not value:
                if name in KNOWN_SHAPES:
                    self.shape(name, KNOWN_SHAPES[name])
                elif name in LEFT_TO_DISCOVERY:
                    self.notes.append(f"{name}: empty in the fixture, left to discovery")
                else:
                    raise SystemExit(
                        f"{self.stream}.{name}: empty object in the fixture; add it to "
                        "KNOWN_SHAPES, LEFT_TO_DISCOVERY or the free-form maps"
                    )
            else:
                if "id" in value and "object" in value:
                    self.notes.append(f"{name}: embedded {value['object']} object, flattened")
                self.walk(value, name, leaf)
            return
        if isinstance(value, list):
            self.add(name, "json")
            return
        if isinstance(value, bool):
            self.add(name, "boolean")
        elif isinstance(value, int):
            if is_timestamp_name(name, leaf, parent):
                self.add(name, "timestamp")
            elif name in NUMBER_COLUMNS:
                self.add(name, "number")
            else:
                self.add(name, "integer")
        elif isinstance(value, float):
            self.add(name, "number")
        elif isinstance(value, str):
            self.add(name, "string")
        elif value is None:
            if is_timestamp_name(name, leaf, parent):
                self.add(name, "timestamp")
            elif name in NUMBER_COLUMNS:
                self.add(name, "number")
            else:
                self.add(name, NULL_TYPES.get(name, "string"))
        else:
            raise SystemExit(f"{self.stream}.{name}: unexpected value {value!r}")

    def shape(self, prefix: str, shape: dict) -> None:
        for key, ty in shape.items():
            name = f"{prefix}_{key}"
            if isinstance(ty, dict):
                self.shape(name, ty)
            else:
                self.add(name, ty)


def build(stream: str, resource: str, kind: str, example: dict) -> tuple[dict, list[str]]:
    b = Builder(stream, resource)
    b.field("id", "id", "", example["id"])
    b.walk({k: v for k, v in example.items() if k != "id"}, "", "")
    for s, after, name, ty, desc in EXTRA_COLUMNS:
        if s != stream or any(c["name"] == name for c in b.columns):
            continue
        col = {"name": name, "type": ty, "description": desc}
        at = len(b.columns)
        if after is not None:
            at = next(i for i, c in enumerate(b.columns) if c["name"] == after) + 1
        b.columns.insert(at, col)
        b.notes.append(f"{name}: not in the fixture, declared ({ty})")
    schema = {"name": stream, "kind": kind, "primary_key": "id", "cursor_field": "created"}
    if kind == "objects":
        schema["deletion"] = {"field": "deleted", "equals": True}
    schema["columns"] = b.columns
    return schema, b.notes


def render(schema: dict) -> str:
    """Pretty JSON with one column per line."""
    lines = ["{"]
    for key in ("name", "kind", "primary_key", "cursor_field", "deletion"):
        if key in schema:
            lines.append(f"  {json.dumps(key)}: {json.dumps(schema[key])},")
    lines.append('  "columns": [')
    cols = [f"    {json.dumps(c, ensure_ascii=False)}" for c in schema["columns"]]
    lines.append(",\n".join(cols))
    lines.append("  ]")
    lines.append("}")
    return "\n".join(lines) + "\n"


# --- checks ----------------------------------------------------------------------------------

def validate(schema: dict) -> None:
    """Mirror of `StreamSchema::from_json` + `validate`, plus a few sanity checks."""
    stream = schema.get("name", "?")

    def fail(msg: str):
        raise SystemExit(f"schema `{stream}`: {msg}")

    allowed = {"name", "kind", "primary_key", "cursor_field", "deletion", "columns"}
    if set(schema) - allowed:
        fail(f"unknown fields {sorted(set(schema) - allowed)}")
    if not isinstance(schema.get("name"), str) or not isinstance(schema.get("columns"), list):
        fail("`name` and `columns` are required")
    if schema.get("kind", "objects") not in ("objects", "events"):
        fail(f"unknown kind {schema['kind']!r}")
    if "deletion" in schema:
        d = schema["deletion"]
        if set(d) != {"field", "equals"} or not isinstance(d["field"], str):
            fail("deletion must be {field, equals}")
    seen: set[str] = set()
    for c in schema["columns"]:
        if set(c) - {"name", "type", "description"} or "name" not in c or "type" not in c:
            fail(f"bad column {c}")
        if c["type"] not in TYPES:
            fail(f"column `{c['name']}` has unknown type {c['type']!r}")
        if not COLUMN_NAME.match(c["name"]):
            fail(f"column `{c['name']}` is not a snake_case name")
        if c["name"] in SYSTEM_COLUMNS:
            fail(f"column `{c['name']}` is a system column")
        if c["name"] in seen:
            fail(f"column `{c['name']}` is declared twice")
        seen.add(c["name"])
    pk = schema.get("primary_key", "id")
    if pk not in seen:
        fail(f"primary key `{pk}` is not a declared column")
    if schema["columns"][0]["name"] != "id":
        fail("`id` is not the first column")
    cursor = schema.get("cursor_field")
    if cursor is not None and stream not in CURSOR_NOT_A_COLUMN:
        types = {c["name"]: c["type"] for c in schema["columns"]}
        if types.get(cursor) != "timestamp":
            fail(f"cursor field `{cursor}` is not a declared timestamp column")


def _fits(ty: str, v) -> bool:
    """Whether a JSON value parses into a column of type `ty` (convert.rs `parse_cell`)."""
    if ty in ("string", "json"):
        return True
    if ty == "integer":
        return isinstance(v, int) and not isinstance(v, bool)
    if ty == "number":
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if ty == "boolean":
        return isinstance(v, bool)
    if ty == "timestamp":
        return isinstance(v, (int, float, str)) and not isinstance(v, bool)
    return False


def convert_like_runtime(schema: dict, record: dict) -> tuple[list[str], list[str]]:
    """Walks `record` the way the converter does; returns (new columns, misfits)."""
    types = {c["name"]: c["type"] for c in schema["columns"]}
    new: list[str] = []
    misfit: list[str] = []

    def visit(obj: dict, path: str) -> None:
        for k, v in obj.items():
            p = f"{path}_{key_part(k)}" if path else key_part(k)
            if p in types:
                if v is not None and not _fits(types[p], v):
                    misfit.append(f"{p}={json.dumps(v)[:40]}")
            elif isinstance(v, dict):
                visit(v, p)
            elif v is not None:
                new.append(p)

    visit(record, "")
    return new, misfit


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fixtures", type=Path, default=DEFAULT_FIXTURES)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--check", action="store_true",
                    help="do not write; fail if the files in --out differ from a regeneration")
    ap.add_argument("-v", "--verbose", action="store_true", help="print per-stream notes")
    args = ap.parse_args()

    resources = json.loads(args.fixtures.read_text())["resources"]
    if not args.check:
        args.out.mkdir(parents=True, exist_ok=True)
    stale = []
    for stream, resource, kind in STREAMS:
        schema, notes = build(stream, resource, kind, resources[resource])
        text = render(schema)
        validate(json.loads(text))
        new, misfit = convert_like_runtime(schema, resources[resource])
        if new or misfit:
            raise SystemExit(f"{stream}: fixture would add {new} / not fit {misfit}")
        path = args.out / f"{stream}.json"
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
            else:
                validate(json.loads(path.read_text()))
        else:
            path.write_text(text)
        cols = schema["columns"]
        n = {t: sum(c["type"] == t for c in cols) for t in TYPES}
        print(f"{stream:22} {len(cols):4} columns  json={n['json']:<3} "
              f"timestamp={n['timestamp']:<3} integer={n['integer']:<3} "
              f"number={n['number']:<2} boolean={n['boolean']}")
        if args.verbose:
            for note in notes:
                print(f"    - {note}")
    if stale:
        print("out of date: " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
