//! Deterministic account data: ids, timestamps, amounts, names and cross references.
//!
//! Every generated value is a pure function of `(seed, kind, index)`, so a charge can name
//! its customer, payment intent and balance transaction without those objects existing yet,
//! types can be generated in any order (or in parallel) and the same seed always yields the
//! same account.

use std::borrow::Cow;

use serde_json::{Value, json};

use super::kinds::{KIND_COUNT, Kind};
use super::render::Scalar;

/// Seeded objects are spread over the 60 days before the simulator started.
const SPAN: i64 = 60 * 86_400;
const DAY: i64 = 86_400;

/// Charge offsets of the refund and dispute mappings, so the first refund and the first
/// dispute do not land on the same charge.
const REFUND_OFFSET: u64 = 3;
const DISPUTE_OFFSET: u64 = 7;

/// Indexes at and above this are objects created through the API rather than seeded, for
/// subscription items created on their own: it keeps their ids apart from the items that
/// new subscriptions embed (those use the subscription's index).
pub(crate) const DIRECT_ITEM_BASE: u64 = 1 << 36;

const FIRST: &[&str] = &[
    "Ada",
    "Grace",
    "Alan",
    "Edsger",
    "Barbara",
    "Donald",
    "Frances",
    "Ken",
    "Margaret",
    "Dennis",
    "Radia",
    "John",
    "Katherine",
    "Linus",
    "Hedy",
    "Tim",
    "Sophie",
    "Guido",
    "Annie",
    "Bjarne",
    "Jean",
    "Niklaus",
    "Mary",
    "Leslie",
    "Shafi",
    "Tony",
    "Adele",
    "Robin",
    "Joan",
    "Butler",
];
const LAST: &[&str] = &[
    "Lovelace",
    "Hopper",
    "Turing",
    "Dijkstra",
    "Liskov",
    "Knuth",
    "Allen",
    "Thompson",
    "Hamilton",
    "Ritchie",
    "Perlman",
    "McCarthy",
    "Johnson",
    "Torvalds",
    "Lamarr",
    "Berners-Lee",
    "Wilson",
    "van Rossum",
    "Easley",
    "Stroustrup",
    "Bartik",
    "Wirth",
    "Keller",
    "Lamport",
    "Goldwasser",
    "Hoare",
    "Goldberg",
    "Milner",
    "Clarke",
    "Lampson",
];
const CITIES: &[(&str, &str, &str)] = &[
    ("San Francisco", "CA", "US"),
    ("New York", "NY", "US"),
    ("Austin", "TX", "US"),
    ("Seattle", "WA", "US"),
    ("London", "", "GB"),
    ("Berlin", "", "DE"),
    ("Paris", "", "FR"),
    ("Dublin", "", "IE"),
    ("Toronto", "ON", "CA"),
    ("Sydney", "NSW", "AU"),
];
const PRODUCTS: &[&str] = &[
    "Starter plan",
    "Growth plan",
    "Enterprise plan",
    "Extra seat",
    "Priority support",
    "Data export add-on",
    "T-shirt",
    "Hoodie",
    "Sticker pack",
    "API credits",
    "Onboarding session",
    "Annual license",
];
const BRANDS: &[&str] = &["visa", "visa", "visa", "mastercard", "mastercard", "amex"];

/// splitmix64: a fast, well-mixed hash for deriving values from indexes.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Fixed-width base62: ASCII order of the alphabet keeps lexicographic order = numeric order.
fn push_base62(out: &mut String, mut n: u64, width: usize) {
    let mut digits = Vec::with_capacity(width.max(11));
    while n > 0 || digits.len() < width {
        digits.push(BASE62[(n % 62) as usize]);
        n /= 62;
    }
    out.extend(digits.iter().rev().map(|&b| b as char));
}

/// j in `0..from` spread evenly over `0..to`.
fn spread(j: u64, from: usize, to: usize) -> u64 {
    j * to as u64 / from.max(1) as u64
}

/// The j with `spread(j, from, to) == i`, if any.
fn unspread(i: u64, from: usize, to: usize) -> Option<u64> {
    if from == 0 || to == 0 {
        return None;
    }
    let j = (i * from as u64).div_ceil(to as u64);
    (j < from as u64 && spread(j, from, to) == i).then_some(j)
}

/// Ordered field assignments for one object; see `render::Template`.
pub(crate) type Fields = Vec<(Cow<'static, str>, Scalar)>;

trait Set {
    fn set(&mut self, path: impl Into<Cow<'static, str>>, value: impl Into<Scalar>);
}

impl Set for Fields {
    fn set(&mut self, path: impl Into<Cow<'static, str>>, value: impl Into<Scalar>) {
        self.push((path.into(), value.into()));
    }
}

/// The generator of one simulated account.
#[derive(Debug, Clone)]
pub(crate) struct Gen {
    seed: u64,
    /// Simulator time (unix seconds) when the account was generated.
    pub(crate) start: i64,
    counts: [usize; KIND_COUNT],
}

impl Gen {
    pub(crate) fn new(seed: u64, start: i64, records: usize) -> Gen {
        let mut counts = [0; KIND_COUNT];
        for kind in super::kinds::ALL_KINDS {
            counts[kind.index()] = kind.seeded_count(records);
        }
        Gen {
            seed,
            start,
            counts,
        }
    }

    pub(crate) fn count(&self, kind: Kind) -> usize {
        self.counts[kind.index()]
    }

    fn h(&self, kind: Kind, i: u64, salt: u64) -> u64 {
        mix(self.seed
            ^ mix((kind.index() as u64) << 56 ^ i)
            ^ salt.wrapping_mul(0xD6E8_FEB8_6659_FD93))
    }

    /// A value in `0..n` (0 when n is 0).
    fn r(&self, kind: Kind, i: u64, salt: u64, n: u64) -> u64 {
        self.h(kind, i, salt) % n.max(1)
    }

    /// An index of `target` chosen for object `i` of `kind`, if `target` has any.
    fn pick(&self, kind: Kind, i: u64, salt: u64, target: Kind) -> Option<u64> {
        let n = self.count(target) as u64;
        (n > 0).then(|| self.r(kind, i, salt, n))
    }

    /// The id of object `i` of `kind`: Stripe's prefix and length, unique across kinds and
    /// increasing with `i` (event ids sort in emission order).
    pub(crate) fn id(&self, kind: Kind, i: u64) -> String {
        let len = kind.id_len();
        let mut id = String::with_capacity(kind.prefix().len() + len + 4);
        id.push_str(kind.prefix());
        if kind == Kind::Coupon {
            // Coupon ids are short uppercase codes like `Z4OV52SU`.
            let mut n = i;
            let mut code = Vec::new();
            while n > 0 || code.len() < 5 {
                code.push(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"[(n % 36) as usize]);
                n /= 36;
            }
            id.extend(code.iter().rev().map(|&b| b as char));
            let h = self.h(kind, i, 99);
            for k in 0..3 {
                id.push(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"[((h >> (8 * k)) % 26) as usize] as char);
            }
            return id;
        }
        id.push(kind.id_tag() as char);
        let width = if len >= 24 { 7 } else { 6 };
        push_base62(&mut id, i, width);
        let mut h = self.h(kind, i, 98);
        let fill = len.saturating_sub(1 + width);
        for k in 0..fill {
            if k % 10 == 9 {
                h = mix(h);
            }
            id.push(BASE62[(h % 62) as usize] as char);
            h /= 62;
        }
        id
    }

    /// `created` of seeded object `i`: spread over the 60 days before start, strictly
    /// increasing with `i` (while there are fewer objects than seconds in 60 days).
    pub(crate) fn created(&self, kind: Kind, i: u64) -> i64 {
        match kind {
            Kind::BalanceTransaction => return self.created(Kind::Charge, i),
            Kind::SubscriptionItem => return self.created(Kind::Subscription, i),
            Kind::PaymentIntent => {
                let c = spread(i, self.count(kind), self.count(Kind::Charge));
                return self.created(Kind::Charge, c) - 1;
            }
            _ => {}
        }
        let n = self.count(kind).max(1) as i64;
        let i = i as i64;
        let slot = (SPAN / n).max(1);
        let jitter = self.r(kind, i as u64, 1, slot as u64) as i64;
        self.start - SPAN + i * SPAN / n + jitter
    }

    /// Fills `out` with the varying fields of object `i` of `kind`, always in the same
    /// order and unconditionally (values may be null), so a template can be filled.
    pub(crate) fn vary(&self, kind: Kind, i: u64, created: i64, out: &mut Fields) {
        match kind {
            Kind::Customer => self.customer(i, created, out),
            Kind::Charge => self.charge(i, created, out),
            Kind::BalanceTransaction => self.balance_transaction(i, created, out),
            Kind::PaymentIntent => self.payment_intent(i, created, out),
            Kind::Invoice => self.invoice(i, created, out),
            Kind::InvoiceItem => self.invoice_item(i, created, out),
            Kind::Subscription => self.subscription(i, created, out),
            Kind::SubscriptionItem => {
                let sub = self.id(Kind::Subscription, i.min(DIRECT_ITEM_BASE - 1));
                self.subscription_item(i, created, &sub, "", out);
            }
            Kind::Product => self.product(i, created, out),
            Kind::Price => self.price(i, created, out),
            Kind::Plan => self.plan(i, created, out),
            Kind::Coupon => self.coupon(i, created, out),
            Kind::Refund => self.refund(i, created, out),
            Kind::Dispute => self.dispute(i, created, out),
            Kind::Payout => self.payout(i, created, out),
            Kind::Event => {
                out.set("id", self.id(kind, i));
                out.set("created", created);
            }
        }
    }

    // --- shared facts, used by several types so references agree ---

    fn customer_name(&self, k: u64) -> (&'static str, &'static str) {
        let first = FIRST[self.r(Kind::Customer, k, 2, FIRST.len() as u64) as usize];
        let last = LAST[self.r(Kind::Customer, k, 3, LAST.len() as u64) as usize];
        (first, last)
    }

    fn customer_email(&self, k: u64) -> String {
        let (first, last) = self.customer_name(k);
        let last: String = last.chars().filter(char::is_ascii_alphabetic).collect();
        format!(
            "{}.{}{}@example.com",
            first.to_lowercase(),
            last.to_lowercase(),
            k
        )
    }

    fn invoice_prefix(&self, k: u64) -> String {
        let mut p = format!("{:04X}", self.r(Kind::Customer, k, 4, 0x10000));
        let mut n = k;
        let mut digits = Vec::new();
        while n > 0 || digits.len() < 4 {
            digits.push(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"[(n % 36) as usize]);
            n /= 36;
        }
        p.extend(digits.iter().rev().map(|&b| b as char));
        p
    }

    fn charge_customer(&self, c: u64) -> Option<u64> {
        self.pick(Kind::Charge, c, 10, Kind::Customer)
    }

    fn charge_amount(&self, c: u64) -> i64 {
        let dollars = [
            5, 9, 10, 12, 19, 25, 29, 49, 50, 75, 99, 120, 149, 199, 250, 499,
        ];
        let d = dollars[self.r(Kind::Charge, c, 11, dollars.len() as u64) as usize];
        let cents = if self.r(Kind::Charge, c, 12, 3) == 0 {
            0
        } else {
            -1
        };
        d * 100 + cents
    }

    fn charge_currency(&self, c: u64) -> &'static str {
        ["usd", "usd", "usd", "usd", "usd", "usd", "eur", "gbp"]
            [self.r(Kind::Charge, c, 13, 8) as usize]
    }

    fn charge_of(&self, kind: Kind, j: u64, offset: u64) -> Option<u64> {
        let n = self.count(Kind::Charge);
        (n > 0).then(|| (spread(j, self.count(kind), n) + offset) % n as u64)
    }

    fn charge_refund(&self, c: u64) -> Option<u64> {
        let n = self.count(Kind::Charge) as u64;
        let shifted = (c + n - REFUND_OFFSET % n.max(1)) % n.max(1);
        unspread(shifted, self.count(Kind::Refund), n as usize)
    }

    fn charge_dispute(&self, c: u64) -> Option<u64> {
        let n = self.count(Kind::Charge) as u64;
        let shifted = (c + n - DISPUTE_OFFSET % n.max(1)) % n.max(1);
        unspread(shifted, self.count(Kind::Dispute), n as usize)
    }

    fn charge_intent(&self, c: u64) -> Option<u64> {
        unspread(c, self.count(Kind::PaymentIntent), self.count(Kind::Charge))
    }

    fn charge_failed(&self, c: u64) -> bool {
        self.charge_refund(c).is_none()
            && self.charge_dispute(c).is_none()
            && self.r(Kind::Charge, c, 14, 25) == 0
    }

    fn price_product(&self, p: u64) -> Option<u64> {
        let n = self.count(Kind::Product) as u64;
        (n > 0).then(|| p % n)
    }

    fn price_amount(&self, p: u64) -> i64 {
        [900, 1900, 2900, 4900, 9900, 19900, 500, 1500][self.r(Kind::Price, p, 20, 8) as usize]
    }

    fn price_interval(&self, p: u64) -> &'static str {
        if self.r(Kind::Price, p, 21, 4) == 0 {
            "year"
        } else {
            "month"
        }
    }

    fn product_name(&self, k: u64) -> String {
        let base = PRODUCTS[(k % PRODUCTS.len() as u64) as usize];
        match k / PRODUCTS.len() as u64 {
            0 => base.to_owned(),
            n => format!("{base} {}", n + 1),
        }
    }

    fn card(&self, kind: Kind, i: u64) -> (&'static str, String, i64, i64) {
        let brand = BRANDS[self.r(kind, i, 30, BRANDS.len() as u64) as usize];
        let last4 = match brand {
            "visa" => "4242".to_owned(),
            "mastercard" => "4444".to_owned(),
            _ => format!("{:04}", self.r(kind, i, 31, 10_000)),
        };
        let month = 1 + self.r(kind, i, 32, 12) as i64;
        let year = 2026 + self.r(kind, i, 33, 6) as i64;
        (brand, last4, month, year)
    }

    fn hash_str(&self, kind: Kind, i: u64, salt: u64, len: usize) -> String {
        let mut h = self.h(kind, i, salt);
        (0..len)
            .map(|k| {
                if k % 10 == 9 {
                    h = mix(h);
                }
                let c = BASE62[(h % 62) as usize] as char;
                h /= 62;
                c
            })
            .collect()
    }

    // --- one function per type ---

    fn customer(&self, k: u64, created: i64, out: &mut Fields) {
        let (first, last) = self.customer_name(k);
        let (city, state, country) =
            CITIES[self.r(Kind::Customer, k, 5, CITIES.len() as u64) as usize];
        let id = self.id(Kind::Customer, k);
        out.set("id", id.clone());
        out.set("created", created);
        out.set("address.city", city);
        out.set("address.country", country);
        out.set(
            "address.line1",
            format!("{} Market Street", 1 + self.r(Kind::Customer, k, 6, 2000)),
        );
        out.set(
            "address.postal_code",
            format!("{:05}", self.r(Kind::Customer, k, 7, 100_000)),
        );
        out.set("address.state", (!state.is_empty()).then_some(state));
        let balance = match self.r(Kind::Customer, k, 8, 10) {
            0 => -500 * (1 + self.r(Kind::Customer, k, 9, 10) as i64),
            _ => 0,
        };
        out.set("balance", balance);
        out.set("delinquent", self.r(Kind::Customer, k, 15, 20) == 0);
        // Most customers have no discount; some carry the fixture's, pointed at them.
        let discount = (self.r(Kind::Customer, k, 16, 8) == 0).then(|| {
            json!({
                "checkout_session": null, "customer": id, "customer_account": null,
                "end": null, "id": format!("di_{}", self.hash_str(Kind::Customer, k, 17, 24)),
                "invoice": null, "invoice_item": null, "object": "discount",
                "promotion_code": null, "source": {"coupon": null, "type": "coupon"},
                "start": created, "subscription": null, "subscription_item": null
            })
        });
        out.set("discount", discount.unwrap_or(Value::Null));
        out.set("email", self.customer_email(k));
        out.set("invoice_prefix", self.invoice_prefix(k));
        out.set("name", format!("{first} {last}"));
        out.set(
            "next_invoice_sequence",
            1 + self.r(Kind::Customer, k, 18, 12) as i64,
        );
        out.set(
            "phone",
            format!("+1555{:07}", self.r(Kind::Customer, k, 19, 10_000_000)),
        );
    }

    fn charge(&self, c: u64, created: i64, out: &mut Fields) {
        let id = self.id(Kind::Charge, c);
        let amount = self.charge_amount(c);
        let failed = self.charge_failed(c);
        let refunded = self.charge_refund(c).is_some();
        let customer = self.charge_customer(c);
        let (brand, last4, month, year) = self.card(Kind::Charge, c);
        out.set("id", id.clone());
        out.set("created", created);
        out.set("amount", amount);
        out.set("amount_captured", if failed { 0 } else { amount });
        out.set("amount_refunded", if refunded { amount } else { 0 });
        out.set("balance_transaction", self.id(Kind::BalanceTransaction, c));
        // Stripe's example charge carries a legacy Source object whose fields are
        // placeholders (`"client_secret": "client_secret"`); a charge made through a
        // PaymentIntent, as these are (`payment_method` set), has none.
        out.set("source", Scalar::Null);
        out.set(
            "billing_details.email",
            customer.map(|k| self.customer_email(k)),
        );
        out.set(
            "billing_details.name",
            customer.map(|k| {
                let (first, last) = self.customer_name(k);
                format!("{first} {last}")
            }),
        );
        out.set("calculated_statement_descriptor", "TRIBUTARY");
        out.set("captured", !failed);
        out.set("currency", self.charge_currency(c));
        out.set("customer", customer.map(|k| self.id(Kind::Customer, k)));
        out.set("description", format!("Order #{}", 10_000 + c));
        out.set("disputed", self.charge_dispute(c).is_some());
        out.set("failure_code", failed.then_some("card_declined"));
        out.set(
            "failure_message",
            failed.then_some("Your card was declined."),
        );
        out.set(
            "outcome.network_status",
            if failed {
                "declined_by_network"
            } else {
                "approved_by_network"
            },
        );
        out.set("outcome.reason", failed.then_some("generic_decline"));
        out.set(
            "outcome.seller_message",
            if failed {
                "The bank did not return any further details with this decline."
            } else {
                "Payment complete."
            },
        );
        out.set(
            "outcome.type",
            if failed {
                "issuer_declined"
            } else {
                "authorized"
            },
        );
        out.set("paid", !failed);
        out.set(
            "payment_intent",
            self.charge_intent(c)
                .map(|j| self.id(Kind::PaymentIntent, j)),
        );
        out.set(
            "payment_method",
            format!("pm_{}", self.hash_str(Kind::Charge, c, 34, 24)),
        );
        out.set("payment_method_details.card.brand", brand);
        out.set("payment_method_details.card.exp_month", month);
        out.set("payment_method_details.card.exp_year", year);
        out.set(
            "payment_method_details.card.fingerprint",
            self.hash_str(Kind::Charge, c, 35, 16),
        );
        out.set("payment_method_details.card.last4", last4);
        out.set("payment_method_details.card.network", brand);
        out.set("receipt_email", customer.map(|k| self.customer_email(k)));
        out.set(
            "receipt_url",
            format!(
                "https://pay.stripe.com/receipts/payment/{}",
                self.hash_str(Kind::Charge, c, 36, 48)
            ),
        );
        out.set("refunded", refunded);
        // Stripe stopped including a charge's `refunds` list unless expanded in 2022-11-15
        // (https://docs.stripe.com/changelog/2022-11-15/deprecates-charges-auto-expand;
        // stripe-go marks it `omitempty`), though its example charge has one: a listed
        // charge has none (the refunds stream lists them).
        out.set("refunds", Scalar::Null);
        out.set("status", if failed { "failed" } else { "succeeded" });
    }

    fn balance_transaction(&self, c: u64, created: i64, out: &mut Fields) {
        let amount = self.charge_amount(c);
        let fee = 30 + amount * 29 / 1000;
        out.set("id", self.id(Kind::BalanceTransaction, c));
        out.set("created", created);
        out.set("amount", amount);
        out.set("available_on", created + 2 * DAY);
        out.set("currency", self.charge_currency(c));
        out.set("description", format!("Order #{}", 10_000 + c));
        out.set("fee", fee);
        out.set(
            "fee_details",
            json!([{"amount": fee, "application": null, "currency": self.charge_currency(c),
                    "description": "Stripe processing fees", "type": "stripe_fee"}]),
        );
        out.set("net", amount - fee);
        out.set("source", self.id(Kind::Charge, c));
        out.set(
            "status",
            if created + 2 * DAY > self.start {
                "pending"
            } else {
                "available"
            },
        );
    }

    fn payment_intent(&self, j: u64, created: i64, out: &mut Fields) {
        let c = spread(j, self.count(Kind::PaymentIntent), self.count(Kind::Charge));
        let id = self.id(Kind::PaymentIntent, j);
        let failed = self.charge_failed(c);
        let amount = self.charge_amount(c);
        out.set("id", id.clone());
        out.set("created", created);
        out.set("amount", amount);
        out.set("amount_received", if failed { 0 } else { amount });
        out.set("canceled_at", Scalar::Null);
        out.set(
            "client_secret",
            format!(
                "{id}_secret_{}",
                self.hash_str(Kind::PaymentIntent, j, 40, 25)
            ),
        );
        out.set("currency", self.charge_currency(c));
        out.set(
            "customer",
            self.charge_customer(c).map(|k| self.id(Kind::Customer, k)),
        );
        out.set("description", format!("Order #{}", 10_000 + c));
        let error = failed.then(|| {
            json!({"code": "card_declined", "decline_code": "generic_decline",
                   "message": "Your card was declined.", "type": "card_error"})
        });
        out.set("last_payment_error", error.unwrap_or(Value::Null));
        out.set("latest_charge", self.id(Kind::Charge, c));
        out.set("next_action", Scalar::Null);
        out.set(
            "payment_method",
            format!("pm_{}", self.hash_str(Kind::Charge, c, 34, 24)),
        );
        out.set("processing", Scalar::Null);
        out.set(
            "status",
            if failed {
                "requires_payment_method"
            } else {
                "succeeded"
            },
        );
    }

    fn invoice(&self, k: u64, created: i64, out: &mut Fields) {
        let id = self.id(Kind::Invoice, k);
        let customer = self.pick(Kind::Invoice, k, 50, Kind::Customer);
        let status = match self.r(Kind::Invoice, k, 51, 100) {
            0..70 => "paid",
            70..85 => "open",
            85..93 => "draft",
            93..97 => "void",
            _ => "uncollectible",
        };
        let subscription = if k.is_multiple_of(3) {
            None
        } else {
            self.pick(Kind::Invoice, k, 52, Kind::Subscription)
        };
        let sub_id = subscription.map(|s| self.id(Kind::Subscription, s));
        let amount = [900, 1900, 2900, 4900, 9900, 19900][self.r(Kind::Invoice, k, 53, 6) as usize]
            * (1 + self.r(Kind::Invoice, k, 54, 3) as i64);
        let paid = status == "paid";
        let finalized = status != "draft";
        let period_start = created - 30 * DAY;
        out.set("id", id.clone());
        out.set("created", created);
        out.set("amount_due", amount);
        out.set("amount_overpaid", 0);
        out.set("amount_paid", if paid { amount } else { 0 });
        out.set(
            "amount_remaining",
            if paid || status == "void" { 0 } else { amount },
        );
        out.set("attempt_count", i64::from(finalized && status != "void"));
        out.set("attempted", finalized && status != "void");
        out.set("auto_advance", status == "open" || status == "draft");
        out.set(
            "billing_reason",
            if subscription.is_some() {
                "subscription_cycle"
            } else {
                "manual"
            },
        );
        out.set("customer", customer.map(|c| self.id(Kind::Customer, c)));
        out.set("customer_email", customer.map(|c| self.customer_email(c)));
        out.set(
            "customer_name",
            customer.map(|c| {
                let (first, last) = self.customer_name(c);
                format!("{first} {last}")
            }),
        );
        out.set("due_date", Scalar::Null);
        out.set("effective_at", finalized.then_some(created + 3600));
        out.set("ending_balance", finalized.then_some(0));
        out.set("from_invoice", Scalar::Null);
        out.set(
            "hosted_invoice_url",
            finalized.then(|| {
                format!(
                    "https://invoice.stripe.com/i/acct_tributary/{}",
                    self.hash_str(Kind::Invoice, k, 55, 32)
                )
            }),
        );
        out.set(
            "invoice_pdf",
            finalized.then(|| {
                format!(
                    "https://pay.stripe.com/invoice/acct_tributary/{}/pdf",
                    self.hash_str(Kind::Invoice, k, 55, 32)
                )
            }),
        );
        out.set("last_finalization_error", Scalar::Null);
        out.set("lines.data.0.amount", amount);
        out.set(
            "lines.data.0.description",
            format!("Services for invoice {}", k + 1),
        );
        out.set(
            "lines.data.0.id",
            format!("il_{}", self.hash_str(Kind::Invoice, k, 56, 24)),
        );
        out.set("lines.data.0.invoice", id.clone());
        out.set("lines.data.0.period.end", created);
        out.set("lines.data.0.period.start", period_start);
        // Since 2025-03-31.basil a line names what generated it in `parent`
        // (https://docs.stripe.com/changelog/basil/2025-03-31/adds-new-parent-field-to-invoicing-objects);
        // the invoice's own `subscription` went, a line's stayed (stripe-go's
        // InvoiceLineItem at 2026-07-29.dahlia still has it).
        out.set(
            "lines.data.0.parent",
            match (&sub_id, subscription) {
                (Some(sub), Some(s)) => json!({
                    "type": "subscription_item_details",
                    "invoice_item_details": null,
                    "subscription_item_details": {
                        "invoice_item": null,
                        "proration": false,
                        "proration_details": {"credited_items": null},
                        "subscription": sub,
                        "subscription_item": self.id(Kind::SubscriptionItem, s),
                    },
                }),
                _ => json!({
                    "type": "invoice_item_details",
                    "invoice_item_details": {
                        "invoice_item": format!("ii_{}", self.hash_str(Kind::Invoice, k, 57, 24)),
                        "proration": false,
                        "proration_details": {"credited_items": null},
                        "subscription": null,
                    },
                    "subscription_item_details": null,
                }),
            },
        );
        out.set("lines.data.0.subscription", sub_id.clone());
        out.set("lines.data.0.subtotal", amount);
        out.set("lines.url", format!("/v1/invoices/{id}/lines"));
        out.set(
            "next_payment_attempt",
            (status == "open").then_some(created + 3 * DAY),
        );
        out.set(
            "number",
            finalized.then(|| {
                let prefix = customer.map_or_else(|| "0000".to_owned(), |c| self.invoice_prefix(c));
                format!(
                    "{prefix}-{:04}",
                    1 + k / self.count(Kind::Customer).max(1) as u64
                )
            }),
        );
        out.set("period_end", created);
        out.set("period_start", period_start);
        out.set("starting_balance", 0);
        out.set("status", status);
        out.set(
            "status_transitions.finalized_at",
            finalized.then_some(created + 3600),
        );
        out.set(
            "status_transitions.marked_uncollectible_at",
            (status == "uncollectible").then_some(created + 20 * DAY),
        );
        out.set("status_transitions.paid_at", paid.then_some(created + 3700));
        out.set(
            "status_transitions.voided_at",
            (status == "void").then_some(created + DAY),
        );
        out.set(
            "parent",
            sub_id.as_ref().map_or(Value::Null, |sub| {
                json!({
                    "type": "subscription_details",
                    "quote_details": null,
                    "subscription_details": {"metadata": {}, "subscription": sub},
                })
            }),
        );
        out.set("subscription", Scalar::Null);
        out.set("subtotal", amount);
        out.set("subtotal_excluding_tax", amount);
        out.set("total", amount);
        out.set("total_excluding_tax", amount);
        out.set("webhooks_delivered_at", created);
    }

    fn invoice_item(&self, k: u64, created: i64, out: &mut Fields) {
        let customer = self.pick(Kind::InvoiceItem, k, 60, Kind::Customer);
        let quantity = 1 + self.r(Kind::InvoiceItem, k, 61, 4) as i64;
        let unit = [500, 1000, 2500, 9900][self.r(Kind::InvoiceItem, k, 62, 4) as usize];
        // Two in three items are already on an invoice, the rest are pending.
        let invoice = if k % 3 == 2 {
            None
        } else {
            self.pick(Kind::InvoiceItem, k, 63, Kind::Invoice)
        };
        out.set("id", self.id(Kind::InvoiceItem, k));
        out.set("date", created);
        out.set("amount", unit * quantity);
        out.set("customer", customer.map(|c| self.id(Kind::Customer, c)));
        out.set(
            "description",
            format!(
                "{} x {}",
                quantity,
                PRODUCTS[(k % PRODUCTS.len() as u64) as usize]
            ),
        );
        out.set("invoice", invoice.map(|i| self.id(Kind::Invoice, i)));
        // An item added by hand has no `parent` (Stripe's example names a placeholder
        // subscription, `"subscription": "subscription"`).
        out.set("parent", Scalar::Null);
        out.set("net_amount", unit * quantity);
        out.set("period.end", created);
        out.set("period.start", created);
        out.set("pricing.unit_amount_decimal", unit.to_string());
        out.set("quantity", quantity);
        out.set("quantity_decimal", quantity.to_string());
    }

    fn subscription(&self, k: u64, created: i64, out: &mut Fields) {
        let id = self.id(Kind::Subscription, k);
        let status = match self.r(Kind::Subscription, k, 70, 20) {
            0..14 => "active",
            14..16 => "trialing",
            16 => "past_due",
            _ => "canceled",
        };
        let canceled = status == "canceled";
        let trial = status == "trialing";
        let ended = canceled.then_some(created + 20 * DAY);
        out.set("id", id.clone());
        out.set("created", created);
        out.set("billing_cycle_anchor", created);
        out.set("billing_cycle_anchor_config", Scalar::Null);
        // Stripe's example lists one billing schedule of placeholders (`"key": "key"`);
        // a subscription without the feature has none.
        out.set("billing_schedules", json!([]));
        out.set("cancel_at", Scalar::Null);
        out.set("cancel_at_period_end", false);
        out.set("canceled_at", ended);
        out.set(
            "customer",
            self.pick(Kind::Subscription, k, 71, Kind::Customer)
                .map(|c| self.id(Kind::Customer, c)),
        );
        out.set("ended_at", ended);
        self.subscription_item(k, created, &id, "items.data.0.", out);
        out.set(
            "items.url",
            format!("/v1/subscription_items?subscription={id}"),
        );
        out.set(
            "latest_invoice",
            self.pick(Kind::Subscription, k, 72, Kind::Invoice)
                .map(|i| self.id(Kind::Invoice, i)),
        );
        out.set("next_pending_invoice_item_invoice", Scalar::Null);
        out.set("pause_collection", Scalar::Null);
        out.set("pending_invoice_item_interval", Scalar::Null);
        out.set("pending_update", Scalar::Null);
        out.set("start_date", created);
        out.set("status", status);
        out.set("trial_end", trial.then_some(created + 14 * DAY));
        out.set("trial_start", trial.then_some(created));
    }

    /// A subscription item, standalone (`prefix` "") or embedded in its subscription
    /// (`prefix` "items.data.0."): both are generated here so they agree.
    fn subscription_item(&self, k: u64, created: i64, sub: &str, prefix: &str, out: &mut Fields) {
        let p = |field: &str| -> Cow<'static, str> {
            if prefix.is_empty() {
                Cow::Owned(field.to_owned())
            } else {
                Cow::Owned(format!("{prefix}{field}"))
            }
        };
        let price = self.pick(Kind::SubscriptionItem, k, 80, Kind::Price);
        let price_id = price.map(|p| self.id(Kind::Price, p));
        let product_id = price
            .and_then(|p| self.price_product(p))
            .map(|p| self.id(Kind::Product, p));
        let amount = price.map(|p| self.price_amount(p));
        let interval = price.map_or("month", |p| self.price_interval(p));
        let period_start = self.start - self.r(Kind::SubscriptionItem, k, 81, 28) as i64 * DAY;
        let period_end = period_start + if interval == "year" { 365 } else { 30 } * DAY;
        out.set(p("id"), self.id(Kind::SubscriptionItem, k));
        out.set(p("created"), created);
        out.set(p("current_period_end"), period_end);
        out.set(p("current_period_start"), period_start);
        // In Stripe a subscription item's plan is its price seen through the older API.
        out.set(p("plan.amount"), amount);
        out.set(p("plan.amount_decimal"), amount.map(|a| a.to_string()));
        out.set(p("plan.billing_scheme"), "per_unit");
        out.set(
            p("plan.created"),
            price.map(|p| self.created(Kind::Price, p)),
        );
        out.set(p("plan.currency"), "usd");
        out.set(p("plan.id"), price_id.clone());
        out.set(p("plan.interval"), interval);
        out.set(p("plan.interval_count"), 1);
        out.set(p("plan.livemode"), false);
        out.set(p("plan.metadata"), json!({}));
        out.set(p("plan.product"), product_id.clone());
        out.set(p("plan.transform_usage"), Scalar::Null);
        out.set(
            p("price.created"),
            price.map(|p| self.created(Kind::Price, p)),
        );
        out.set(p("price.id"), price_id);
        out.set(p("price.product"), product_id);
        out.set(p("price.recurring.interval"), interval);
        out.set(p("price.transform_quantity"), Scalar::Null);
        out.set(p("price.unit_amount"), amount);
        out.set(
            p("price.unit_amount_decimal"),
            amount.map(|a| a.to_string()),
        );
        out.set(
            p("quantity"),
            1 + self.r(Kind::SubscriptionItem, k, 82, 3) as i64,
        );
        out.set(p("subscription"), sub.to_owned());
    }

    fn product(&self, k: u64, created: i64, out: &mut Fields) {
        out.set("id", self.id(Kind::Product, k));
        out.set("created", created);
        out.set("active", self.r(Kind::Product, k, 90, 10) != 0);
        out.set(
            "default_price",
            (k < self.count(Kind::Price) as u64).then(|| self.id(Kind::Price, k)),
        );
        out.set(
            "description",
            format!("{} by Tributary Demo Co.", self.product_name(k)),
        );
        out.set("name", self.product_name(k));
        out.set("package_dimensions", Scalar::Null);
        out.set("type", "service");
        out.set(
            "updated",
            created + self.r(Kind::Product, k, 91, 5 * DAY as u64) as i64,
        );
    }

    fn price(&self, p: u64, created: i64, out: &mut Fields) {
        let amount = self.price_amount(p);
        // One price in five is a one-time price: no `recurring`.
        let recurring = (self.r(Kind::Price, p, 22, 5) != 0).then(|| {
            json!({"interval": self.price_interval(p), "interval_count": 1, "meter": null,
                   "trial_period_days": null, "usage_type": "licensed"})
        });
        out.set("id", self.id(Kind::Price, p));
        out.set("created", created);
        out.set("active", self.r(Kind::Price, p, 23, 10) != 0);
        out.set("lookup_key", Scalar::Null);
        out.set(
            "nickname",
            format!("{} {}", self.price_interval(p), amount / 100),
        );
        out.set(
            "product",
            self.price_product(p).map(|k| self.id(Kind::Product, k)),
        );
        out.set(
            "type",
            if recurring.is_some() {
                "recurring"
            } else {
                "one_time"
            },
        );
        out.set("recurring", recurring.unwrap_or(Value::Null));
        out.set("transform_quantity", Scalar::Null);
        out.set("unit_amount", amount);
        out.set("unit_amount_decimal", amount.to_string());
    }

    fn plan(&self, k: u64, created: i64, out: &mut Fields) {
        let amount = [900, 1900, 4900, 9900][self.r(Kind::Plan, k, 100, 4) as usize];
        let interval = if self.r(Kind::Plan, k, 101, 3) == 0 {
            "year"
        } else {
            "month"
        };
        out.set("id", self.id(Kind::Plan, k));
        out.set("created", created);
        out.set("active", self.r(Kind::Plan, k, 102, 8) != 0);
        out.set("amount", amount);
        out.set("amount_decimal", amount.to_string());
        out.set("interval", interval);
        out.set("nickname", format!("{interval}ly {}", amount / 100));
        out.set(
            "product",
            self.pick(Kind::Plan, k, 103, Kind::Product)
                .map(|p| self.id(Kind::Product, p)),
        );
        out.set("transform_usage", Scalar::Null);
    }

    fn coupon(&self, k: u64, created: i64, out: &mut Fields) {
        let percent = self.r(Kind::Coupon, k, 110, 3) != 0;
        let duration = ["once", "repeating", "forever"][self.r(Kind::Coupon, k, 111, 3) as usize];
        let percent_off = [10.0, 15.0, 20.0, 25.5, 50.0][self.r(Kind::Coupon, k, 112, 5) as usize];
        let amount_off = 500 * (1 + self.r(Kind::Coupon, k, 113, 4) as i64);
        let max = (self.r(Kind::Coupon, k, 114, 2) == 0).then_some(100);
        out.set("id", self.id(Kind::Coupon, k));
        out.set("created", created);
        out.set("amount_off", (!percent).then_some(amount_off));
        out.set("currency", (!percent).then_some("usd"));
        out.set("duration", duration);
        out.set("duration_in_months", (duration == "repeating").then_some(3));
        out.set("max_redemptions", max);
        out.set(
            "name",
            if percent {
                format!("{percent_off}% off")
            } else {
                format!("${} off", amount_off / 100)
            },
        );
        out.set(
            "percent_off",
            if percent {
                Scalar::Float(percent_off)
            } else {
                Scalar::Null
            },
        );
        out.set("redeem_by", Scalar::Null);
        out.set("times_redeemed", self.r(Kind::Coupon, k, 115, 40) as i64);
        out.set("valid", true);
    }

    fn refund(&self, j: u64, created: i64, out: &mut Fields) {
        let c = self.charge_of(Kind::Refund, j, REFUND_OFFSET);
        let reason = [Some("requested_by_customer"), Some("duplicate"), None]
            [self.r(Kind::Refund, j, 120, 3) as usize];
        out.set("id", self.id(Kind::Refund, j));
        out.set("created", created);
        out.set("amount", c.map_or(0, |c| self.charge_amount(c)));
        out.set(
            "balance_transaction",
            format!("txn_{}", self.hash_str(Kind::Refund, j, 121, 24)),
        );
        out.set("charge", c.map(|c| self.id(Kind::Charge, c)));
        out.set("currency", c.map_or("usd", |c| self.charge_currency(c)));
        out.set(
            "customer",
            c.and_then(|c| self.charge_customer(c))
                .map(|k| self.id(Kind::Customer, k)),
        );
        out.set(
            "payment_intent",
            c.and_then(|c| self.charge_intent(c))
                .map(|p| self.id(Kind::PaymentIntent, p)),
        );
        out.set("reason", reason);
        out.set("status", "succeeded");
    }

    fn dispute(&self, j: u64, created: i64, out: &mut Fields) {
        let c = self.charge_of(Kind::Dispute, j, DISPUTE_OFFSET);
        let status = [
            "needs_response",
            "under_review",
            "won",
            "lost",
            "warning_needs_response",
        ][self.r(Kind::Dispute, j, 130, 5) as usize];
        let reason = [
            "fraudulent",
            "product_not_received",
            "duplicate",
            "general",
            "subscription_canceled",
        ][self.r(Kind::Dispute, j, 131, 5) as usize];
        out.set("id", self.id(Kind::Dispute, j));
        out.set("created", created);
        out.set("amount", c.map_or(0, |c| self.charge_amount(c)));
        out.set("charge", c.map(|c| self.id(Kind::Charge, c)));
        out.set("currency", c.map_or("usd", |c| self.charge_currency(c)));
        out.set("evidence_details.due_by", created + 14 * DAY);
        out.set(
            "evidence_details.has_evidence",
            matches!(status, "under_review" | "won" | "lost"),
        );
        out.set("is_charge_refundable", status.contains("warning"));
        out.set(
            "payment_intent",
            c.and_then(|c| self.charge_intent(c))
                .map(|p| self.id(Kind::PaymentIntent, p)),
        );
        out.set(
            "payment_method_details.card.brand",
            c.map_or("visa", |c| self.card(Kind::Charge, c).0),
        );
        out.set(
            "payment_method_details.card.network",
            c.map_or("visa", |c| self.card(Kind::Charge, c).0),
        );
        out.set("reason", reason);
        out.set("status", status);
    }

    fn payout(&self, j: u64, created: i64, out: &mut Fields) {
        let arrival = created + 2 * DAY;
        let status = if self.r(Kind::Payout, j, 140, 25) == 0 {
            "failed"
        } else if arrival > self.start {
            "in_transit"
        } else {
            "paid"
        };
        let failed = status == "failed";
        out.set("id", self.id(Kind::Payout, j));
        out.set("created", created);
        out.set(
            "amount",
            10_000 + self.r(Kind::Payout, j, 141, 500_000) as i64,
        );
        out.set("arrival_date", arrival);
        out.set(
            "balance_transaction",
            format!("txn_{}", self.hash_str(Kind::Payout, j, 142, 24)),
        );
        out.set(
            "destination",
            format!("ba_{}", self.hash_str(Kind::Payout, 0, 143, 24)),
        );
        out.set("failure_code", failed.then_some("account_closed"));
        out.set(
            "failure_message",
            failed.then_some("The bank account has been closed."),
        );
        out.set(
            "reconciliation_status",
            if status == "paid" {
                "completed"
            } else {
                "not_applicable"
            },
        );
        out.set("status", status);
        out.set("trace_id", Scalar::Null);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stripe_shaped_unique_and_ordered() {
        let g = Gen::new(7, 1_700_000_000, 1000);
        let a = g.id(Kind::Charge, 1);
        let b = g.id(Kind::Charge, 2);
        assert!(a.starts_with("ch_") && a.len() == 3 + 24, "{a}");
        assert!(a < b);
        assert_eq!(g.id(Kind::Customer, 5).len(), 4 + 14);
        assert_eq!(g.id(Kind::Coupon, 5).len(), 8);
        assert_ne!(g.id(Kind::Price, 1), g.id(Kind::Plan, 1));
        assert!(g.id(Kind::Event, 99) < g.id(Kind::Event, 100));
        assert_eq!(g.id(Kind::Charge, 1), Gen::new(7, 0, 5).id(Kind::Charge, 1));
    }

    #[test]
    fn created_is_strictly_increasing_and_in_the_past() {
        let g = Gen::new(7, 1_700_000_000, 1000);
        for kind in super::super::kinds::ALL_KINDS {
            let n = g.count(kind) as u64;
            for i in 1..n {
                assert!(g.created(kind, i - 1) < g.created(kind, i), "{kind:?} {i}");
            }
            if n > 0 {
                assert!(g.created(kind, n - 1) < g.start);
                assert!(g.created(kind, 0) >= g.start - SPAN - 1);
            }
        }
    }

    #[test]
    fn references_agree() {
        let g = Gen::new(1, 1_700_000_000, 400);
        for j in 0..g.count(Kind::Refund) as u64 {
            let c = g
                .charge_of(Kind::Refund, j, REFUND_OFFSET)
                .unwrap_or(u64::MAX);
            assert_eq!(g.charge_refund(c), Some(j));
        }
        for j in 0..g.count(Kind::PaymentIntent) as u64 {
            let c = spread(j, g.count(Kind::PaymentIntent), g.count(Kind::Charge));
            assert_eq!(g.charge_intent(c), Some(j));
        }
    }
}
