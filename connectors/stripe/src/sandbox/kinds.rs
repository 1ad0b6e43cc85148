//! The object types the simulator serves, and everything that differs between them: URL,
//! id prefix, event names, which list filters Stripe accepts, how many are seeded.
//!
//! Keeping this in one table means a new resource is one enum variant plus its generator,
//! rather than a scattering of `match`es across the HTTP layer.

use serde_json::Value;

/// One Stripe object type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    Customer,
    Charge,
    Invoice,
    InvoiceItem,
    Subscription,
    SubscriptionItem,
    Product,
    Price,
    Plan,
    Coupon,
    PaymentIntent,
    Refund,
    Dispute,
    Payout,
    BalanceTransaction,
    Event,
}

/// How `DELETE /v1/<resource>/<id>` behaves for a type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeleteMode {
    /// Stripe has no delete endpoint for the type.
    Unsupported,
    /// The object is removed (a tombstone stays in the ordering).
    Delete,
    /// Subscriptions: the object is canceled and stays listed.
    Cancel,
    /// Subscription items: the item leaves its subscription ("Deletes an item from the
    /// subscription. Removing a subscription item from a subscription will not cancel the
    /// subscription", https://docs.stripe.com/api/subscription_items/delete), announced as
    /// `customer.subscription.updated` with the old `items` in `previous_attributes`.
    RemoveItem,
}

/// Every event type Stripe sends (the official Go SDK's `EventType` list; see
/// `fixtures/README.md`). The simulator emits only these and refuses others in `types[]`.
const EVENT_TYPES: &str = include_str!("../../fixtures/event_types.txt");

/// Whether Stripe has an event type called `name`.
pub(crate) fn known_event_type(name: &str) -> bool {
    EVENT_TYPES.lines().any(|t| t == name)
}

/// Number of kinds, for per-kind arrays.
pub(crate) const KIND_COUNT: usize = 16;

/// Every kind, in `Kind as usize` order.
pub(crate) const ALL_KINDS: [Kind; KIND_COUNT] = [
    Kind::Customer,
    Kind::Charge,
    Kind::Invoice,
    Kind::InvoiceItem,
    Kind::Subscription,
    Kind::SubscriptionItem,
    Kind::Product,
    Kind::Price,
    Kind::Plan,
    Kind::Coupon,
    Kind::PaymentIntent,
    Kind::Refund,
    Kind::Dispute,
    Kind::Payout,
    Kind::BalanceTransaction,
    Kind::Event,
];

impl Kind {
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// The URL segment: `/v1/<resource>`.
    pub(crate) fn resource(self) -> &'static str {
        match self {
            Kind::Customer => "customers",
            Kind::Charge => "charges",
            Kind::Invoice => "invoices",
            Kind::InvoiceItem => "invoiceitems",
            Kind::Subscription => "subscriptions",
            Kind::SubscriptionItem => "subscription_items",
            Kind::Product => "products",
            Kind::Price => "prices",
            Kind::Plan => "plans",
            Kind::Coupon => "coupons",
            Kind::PaymentIntent => "payment_intents",
            Kind::Refund => "refunds",
            Kind::Dispute => "disputes",
            Kind::Payout => "payouts",
            Kind::BalanceTransaction => "balance_transactions",
            Kind::Event => "events",
        }
    }

    pub(crate) fn from_resource(resource: &str) -> Option<Kind> {
        ALL_KINDS.into_iter().find(|k| k.resource() == resource)
    }

    /// The `object` field, also the key of the type in the fixture file.
    pub(crate) fn object(self) -> &'static str {
        match self {
            Kind::Customer => "customer",
            Kind::Charge => "charge",
            Kind::Invoice => "invoice",
            Kind::InvoiceItem => "invoiceitem",
            Kind::Subscription => "subscription",
            Kind::SubscriptionItem => "subscription_item",
            Kind::Product => "product",
            Kind::Price => "price",
            Kind::Plan => "plan",
            Kind::Coupon => "coupon",
            Kind::PaymentIntent => "payment_intent",
            Kind::Refund => "refund",
            Kind::Dispute => "dispute",
            Kind::Payout => "payout",
            Kind::BalanceTransaction => "balance_transaction",
            Kind::Event => "event",
        }
    }

    /// Id prefix. Plans share `price_` with prices because in Stripe a plan is a price.
    pub(crate) fn prefix(self) -> &'static str {
        match self {
            Kind::Customer => "cus_",
            Kind::Charge => "ch_",
            Kind::Invoice => "in_",
            Kind::InvoiceItem => "ii_",
            Kind::Subscription => "sub_",
            Kind::SubscriptionItem => "si_",
            Kind::Product => "prod_",
            Kind::Price | Kind::Plan => "price_",
            Kind::Coupon => "",
            Kind::PaymentIntent => "pi_",
            Kind::Refund => "re_",
            Kind::Dispute => "dp_",
            Kind::Payout => "po_",
            Kind::BalanceTransaction => "txn_",
            Kind::Event => "evt_",
        }
    }

    /// Characters after the prefix, as Stripe's own ids have them.
    pub(crate) fn id_len(self) -> usize {
        match self {
            Kind::Customer | Kind::SubscriptionItem | Kind::Product => 14,
            Kind::Coupon => 8,
            _ => 24,
        }
    }

    /// A character unique per kind inside generated ids, so plans and prices (which share
    /// a prefix) can never collide.
    pub(crate) fn id_tag(self) -> u8 {
        b"ABCDEFGHJKLMNPQR"[self.index()]
    }

    /// The field lists order by and `created[...]` filters on. Invoice items carry `date`
    /// instead of `created` (Stripe filters their `created` parameter on it).
    pub(crate) fn created_field(self) -> &'static str {
        match self {
            Kind::InvoiceItem => "date",
            _ => "created",
        }
    }

    /// The prefix of this type's event names (`customer.subscription` for subscriptions).
    pub(crate) fn event_prefix(self) -> Option<&'static str> {
        match self {
            Kind::SubscriptionItem | Kind::BalanceTransaction | Kind::Event => None,
            Kind::Subscription => Some("customer.subscription"),
            Kind::Dispute => Some("charge.dispute"),
            _ => Some(self.object()),
        }
    }

    /// The event a newly created object emits. Stripe has no `charge.created`: a charge is
    /// born succeeded or failed.
    pub(crate) fn created_event(self, object: &Value) -> Option<String> {
        let prefix = self.event_prefix()?;
        Some(match self {
            Kind::Charge if str_field(object, "status") == Some("failed") => {
                "charge.failed".to_owned()
            }
            Kind::Charge => "charge.succeeded".to_owned(),
            _ => format!("{prefix}.created"),
        })
    }

    /// The event an update emits: a specific one when a state field moved to a value Stripe
    /// announces (`charge.refunded`, `invoice.paid`, ...), otherwise `<type>.updated`. One
    /// mutation emits one event, so tests can count them. `None` for types Stripe sends no
    /// update event for (payment intents, balance transactions, subscription items, invoice
    /// items).
    pub(crate) fn updated_event(self, old: &Value, new: &Value) -> Option<String> {
        let prefix = self.event_prefix()?;
        let moved_to = |field: &str, value: &Value| -> bool {
            new.get(field) == Some(value) && old.get(field) != Some(value)
        };
        let status_to = |s: &str| moved_to("status", &Value::String(s.to_owned()));
        let specific = match self {
            Kind::Charge if moved_to("refunded", &Value::Bool(true)) => Some("charge.refunded"),
            Kind::Charge if moved_to("captured", &Value::Bool(true)) => Some("charge.captured"),
            Kind::Charge if status_to("failed") => Some("charge.failed"),
            Kind::Charge if status_to("succeeded") => Some("charge.succeeded"),
            Kind::Invoice if status_to("paid") => Some("invoice.paid"),
            Kind::Invoice if status_to("open") => Some("invoice.finalized"),
            Kind::Invoice
                if new.get("attempt_count") != old.get("attempt_count")
                    && str_field(new, "status") != Some("paid") =>
            {
                Some("invoice.payment_failed")
            }
            Kind::PaymentIntent if status_to("succeeded") => Some("payment_intent.succeeded"),
            Kind::PaymentIntent if status_to("requires_payment_method") => {
                Some("payment_intent.payment_failed")
            }
            Kind::PaymentIntent => return None,
            Kind::Dispute
                if status_to("won") || status_to("lost") || status_to("warning_closed") =>
            {
                Some("charge.dispute.closed")
            }
            Kind::Payout if status_to("paid") => Some("payout.paid"),
            Kind::Payout if status_to("failed") => Some("payout.failed"),
            // Stripe has no `invoiceitem.updated` (its event list holds only
            // `invoiceitem.created` and `invoiceitem.deleted`): an edit of an item on a
            // draft invoice shows as the invoice's `invoice.updated` (see `Store::update`).
            Kind::InvoiceItem => return None,
            _ => None,
        };
        Some(specific.map_or_else(|| format!("{prefix}.updated"), str::to_owned))
    }

    pub(crate) fn delete_mode(self) -> DeleteMode {
        match self {
            Kind::Customer
            | Kind::InvoiceItem
            | Kind::Product
            | Kind::Price
            | Kind::Plan
            | Kind::Coupon
            | Kind::Invoice => DeleteMode::Delete,
            Kind::Subscription => DeleteMode::Cancel,
            Kind::SubscriptionItem => DeleteMode::RemoveItem,
            _ => DeleteMode::Unsupported,
        }
    }

    /// Whether `POST /v1/<resource>[/<id>]` exists. Events and balance transactions are
    /// read-only in Stripe; the Rust API may still change them for tests.
    pub(crate) fn http_writable(self) -> bool {
        !matches!(self, Kind::Event | Kind::BalanceTransaction)
    }

    /// Whether Stripe lets the caller choose the id on create.
    pub(crate) fn custom_id(self) -> bool {
        matches!(self, Kind::Coupon | Kind::Product | Kind::Plan)
    }

    /// Equality filters the list endpoint accepts besides paging and `created`, as Stripe
    /// documents them. Subscription items' `subscription` and events' `type`/`types[]` are
    /// handled separately because they are indexed.
    pub(crate) fn list_filters(self) -> &'static [&'static str] {
        match self {
            Kind::Customer => &["email"],
            Kind::Charge => &["customer", "payment_intent"],
            Kind::Invoice => &["customer", "status", "subscription"],
            Kind::InvoiceItem => &["customer", "invoice"],
            Kind::Subscription => &["customer", "status"],
            Kind::Product | Kind::Plan => &["active", "product"],
            Kind::Price => &["active", "product", "type", "currency"],
            Kind::PaymentIntent => &["customer"],
            Kind::Refund | Kind::Dispute => &["charge", "payment_intent"],
            Kind::Payout => &["status"],
            Kind::BalanceTransaction => &["type", "source", "currency"],
            Kind::SubscriptionItem | Kind::Coupon | Kind::Event => &[],
        }
    }

    /// How many objects are seeded for `records`. Charges (and their balance transactions)
    /// get `records`; the other types are scaled down the way a real account is shaped;
    /// every list type gets at least `min(records, 5)` so each stream has data. Events are
    /// not generated here: they are the history of the others (`Store::seed_history`).
    pub(crate) fn seeded_count(self, records: usize) -> usize {
        let n = match self {
            Kind::Charge | Kind::BalanceTransaction => records,
            Kind::PaymentIntent => records / 4,
            Kind::Customer | Kind::Invoice | Kind::InvoiceItem => records / 10,
            Kind::Subscription | Kind::SubscriptionItem | Kind::Refund => records / 20,
            Kind::Price | Kind::Payout => records / 50,
            Kind::Product | Kind::Plan | Kind::Dispute => records / 100,
            Kind::Coupon => records / 200,
            Kind::Event => return 0,
        };
        n.max(records.min(5))
    }
}

fn str_field<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    object.get(field).and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_round_trip_and_tags_are_unique() {
        for (i, kind) in ALL_KINDS.into_iter().enumerate() {
            assert_eq!(kind.index(), i);
            assert_eq!(Kind::from_resource(kind.resource()), Some(kind));
        }
        let mut tags: Vec<u8> = ALL_KINDS.iter().map(|k| k.id_tag()).collect();
        tags.sort_unstable();
        tags.dedup();
        assert_eq!(tags.len(), KIND_COUNT);
    }

    #[test]
    fn subscription_items_match_subscriptions() {
        for records in [0, 1, 3, 7, 200, 100_000] {
            assert_eq!(
                Kind::Subscription.seeded_count(records),
                Kind::SubscriptionItem.seeded_count(records)
            );
            assert!(Kind::PaymentIntent.seeded_count(records) <= records);
        }
    }
}
