//! The Stripe streams ([`STREAMS`], one table of data) and how one stream is read.
//!
//! A read has two phases, and every page it emits carries a [`Cursor`] that is a valid
//! place to resume (the runtime commits a page's rows together with its cursor):
//!
//! - **Backfill.** Note the newest event of the stream's feed (the *anchor*) and Stripe's
//!   clock (*since*), then walk the list endpoint newest-first with `starting_after`. Pages
//!   are the response bodies, untouched. The last page switches the cursor to the changes
//!   phase. A backfill read as `created` ranges at once draws the line by the local clock
//!   instead (the objects created before it, the newest event before it), and reads the
//!   anchor alongside its first pages (`Reader::backfill_from_now`).
//! - **Changes.** Walk the stream's events forward in time from the anchor
//!   (`ending_before=<anchor>`), and emit the latest version of each changed object, in the
//!   order of their last change, flagging deletions.
//!
//! A cursor with no anchor (the feed was empty) follows the feed from the oldest object
//! created at or after `since`. A quiet feed's cursor is re-based on Stripe's clock once a
//! day, so it does not age past retention while nothing happens.
//!
//! Stripe keeps events for 30 days. A cursor older than that (or whose anchor Stripe no
//! longer knows) cannot be followed: the stream is read again in full, and the first page
//! of that backfill replaces the table.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tributary_sdk::pagination::{PageSender, ProgressGuard, spawn_pages};
use tributary_sdk::ranges::{self, Answer, Fetch, Fetched, Order, RangeReader};
use tributary_sdk::{Error, Page, PageStream, Record, Records, Result, StreamSchema};

use crate::client::{Listing, StripeClient, VENDOR, is_missing};

/// How many pages a read fetches ahead of the runtime's conversion.
const FETCH_AHEAD: usize = 4;

/// How long Stripe keeps events.
const EVENT_RETENTION_SECS: i64 = 30 * 24 * 3600;

/// How far back objects landed `pending` are listed again (see `Reader::resettle`). Stripe
/// makes most funds available within days; some account types hold them for weeks.
const SETTLE_WINDOW_SECS: i64 = 60 * 24 * 3600;

/// Objects fetched at once when events are rendered in another API version.
const REFETCH_CONCURRENCY: usize = 8;

/// How close to the retention limit a cursor may get before it is treated as expired: the
/// time a sync may take to reach the anchor.
const RETENTION_MARGIN_SECS: i64 = 3600;

/// How far before the local clock a concurrent backfill draws its line between the
/// listing and the events (see `Reader::backfill_from_now`), and so the most the local
/// clock may differ from Stripe's before the backfill starts from Stripe's clock instead.
const CLOCK_MARGIN_SECS: i64 = 10;

/// How old a quiet changes cursor gets before it is re-based on Stripe's clock (see
/// `Reader::caught_up`).
const REBASE_AFTER_SECS: i64 = 24 * 3600;

/// Where a stream's changes come from.
#[derive(Debug, Clone, Copy)]
pub enum Feed {
    /// Events of these types, whose `data.object` is an object of the stream.
    Events(&'static [&'static str]),
    /// The stream is Stripe's events feed itself.
    AllEvents,
    /// The objects are immutable: new ones are read from the list endpoint itself.
    ListOnly,
    /// The items embedded in subscriptions, from the subscriptions list and the
    /// subscription events of these types.
    SubscriptionItems(&'static [&'static str]),
    /// Invoice items: events of these types. Stripe has no `invoiceitem.updated`, so the
    /// `invoice.*` events among them stand for edits: the items of each invoice they name
    /// are listed again (`GET /v1/invoiceitems?invoice=<id>`).
    InvoiceItems(&'static [&'static str]),
}

/// One Stripe stream.
#[derive(Debug)]
pub struct StreamDef {
    /// The stream's name, which is also its table's.
    pub name: &'static str,
    /// The schema file's text.
    pub schema: &'static str,
    /// The list endpoint walked by the backfill.
    pub list_path: &'static str,
    /// Extra parameters of every list request (e.g. `status=all`).
    pub list_params: &'static [(&'static str, &'static str)],
    /// Where changes come from.
    pub feed: Feed,
    /// Objects whose `status` is `pending` can still change without an event (balance
    /// transactions becoming `available`): each incremental run lists again from the
    /// oldest one still pending.
    pub settles: bool,
}

// The event types below are Stripe's (fixtures/event_types.txt, from the official Go SDK;
// a test checks every one). A type's `data.object` is an object of the stream.

const SUBSCRIPTION_EVENTS: &[&str] = &[
    "customer.subscription.created",
    "customer.subscription.updated",
    // "Occurs whenever a customer's subscription ends": the subscription is `canceled`,
    // not deleted (https://docs.stripe.com/api/events/types).
    "customer.subscription.deleted",
    "customer.subscription.paused",
    "customer.subscription.resumed",
    "customer.subscription.trial_will_end",
    "customer.subscription.pending_update_applied",
    "customer.subscription.pending_update_expired",
];

/// Every event that carries an invoice (`invoice.upcoming` and `invoice.will_be_due` are
/// left out: the first carries a preview without an id, the second only announces a due
/// date).
const INVOICE_EVENTS: &[&str] = &[
    "invoice.created",
    "invoice.updated",
    "invoice.deleted",
    "invoice.finalized",
    "invoice.finalization_failed",
    "invoice.sent",
    "invoice.paid",
    "invoice.payment_succeeded",
    "invoice.payment_failed",
    "invoice.payment_action_required",
    "invoice.payment_attempt_required",
    "invoice.marked_uncollectible",
    "invoice.overdue",
    "invoice.overpaid",
    "invoice.voided",
];

/// The event types whose object no longer exists afterwards: Stripe deletes customers,
/// draft invoices, invoice items, products, prices, plans and coupons. Every other
/// `*.deleted` type we follow means something else (`customer.subscription.deleted`: the
/// subscription ended and stays, `canceled`).
const DELETIONS: &[&str] = &[
    "customer.deleted",
    "invoice.deleted",
    "invoiceitem.deleted",
    "product.deleted",
    "price.deleted",
    "plan.deleted",
    "coupon.deleted",
];

/// Whether an event of type `t` means its object was deleted.
pub fn deletes(t: &str) -> bool {
    DELETIONS.contains(&t)
}

/// Every stream, in the order `discover` lists them.
pub static STREAMS: &[StreamDef] = &[
    StreamDef {
        name: "customers",
        schema: include_str!("../../../schemas/stripe/customers.json"),
        list_path: "/v1/customers",
        list_params: &[],
        feed: Feed::Events(&["customer.created", "customer.updated", "customer.deleted"]),
        settles: false,
    },
    StreamDef {
        name: "charges",
        schema: include_str!("../../../schemas/stripe/charges.json"),
        list_path: "/v1/charges",
        list_params: &[],
        feed: Feed::Events(&[
            "charge.succeeded",
            "charge.updated",
            "charge.refunded",
            "charge.captured",
            "charge.failed",
            "charge.pending",
            "charge.expired",
        ]),
        settles: false,
    },
    StreamDef {
        name: "invoices",
        schema: include_str!("../../../schemas/stripe/invoices.json"),
        list_path: "/v1/invoices",
        list_params: &[],
        feed: Feed::Events(INVOICE_EVENTS),
        settles: false,
    },
    StreamDef {
        name: "invoice_items",
        schema: include_str!("../../../schemas/stripe/invoice_items.json"),
        list_path: "/v1/invoiceitems",
        list_params: &[],
        // Stripe has no `invoiceitem.updated`. An item can only be edited while it is
        // pending or its invoice is a draft ("Updating an invoice item is only possible
        // before the invoice it's attached to is closed",
        // https://docs.stripe.com/api/invoiceitems/update); an edit on a draft changes the
        // invoice (`invoice.updated`), and a pending item is pulled into an invoice
        // (`invoice.created`) before it can be finalized (`invoice.finalized`). So these
        // invoice events re-list their invoice's items.
        feed: Feed::InvoiceItems(&[
            "invoiceitem.created",
            "invoiceitem.deleted",
            "invoice.created",
            "invoice.updated",
            "invoice.finalized",
        ]),
        settles: false,
    },
    StreamDef {
        name: "subscriptions",
        schema: include_str!("../../../schemas/stripe/subscriptions.json"),
        list_path: "/v1/subscriptions",
        list_params: &[("status", "all")],
        feed: Feed::Events(SUBSCRIPTION_EVENTS),
        settles: false,
    },
    StreamDef {
        name: "subscription_items",
        schema: include_str!("../../../schemas/stripe/subscription_items.json"),
        list_path: "/v1/subscriptions",
        list_params: &[("status", "all")],
        feed: Feed::SubscriptionItems(SUBSCRIPTION_EVENTS),
        settles: false,
    },
    StreamDef {
        name: "products",
        schema: include_str!("../../../schemas/stripe/products.json"),
        list_path: "/v1/products",
        list_params: &[],
        feed: Feed::Events(&["product.created", "product.updated", "product.deleted"]),
        settles: false,
    },
    StreamDef {
        name: "prices",
        schema: include_str!("../../../schemas/stripe/prices.json"),
        list_path: "/v1/prices",
        list_params: &[],
        feed: Feed::Events(&["price.created", "price.updated", "price.deleted"]),
        settles: false,
    },
    StreamDef {
        name: "plans",
        schema: include_str!("../../../schemas/stripe/plans.json"),
        list_path: "/v1/plans",
        list_params: &[],
        feed: Feed::Events(&["plan.created", "plan.updated", "plan.deleted"]),
        settles: false,
    },
    StreamDef {
        name: "coupons",
        schema: include_str!("../../../schemas/stripe/coupons.json"),
        list_path: "/v1/coupons",
        list_params: &[],
        feed: Feed::Events(&["coupon.created", "coupon.updated", "coupon.deleted"]),
        settles: false,
    },
    StreamDef {
        name: "payment_intents",
        schema: include_str!("../../../schemas/stripe/payment_intents.json"),
        list_path: "/v1/payment_intents",
        list_params: &[],
        feed: Feed::Events(&[
            "payment_intent.created",
            "payment_intent.succeeded",
            "payment_intent.payment_failed",
            "payment_intent.canceled",
            "payment_intent.processing",
            "payment_intent.requires_action",
            "payment_intent.amount_capturable_updated",
            "payment_intent.partially_funded",
        ]),
        settles: false,
    },
    StreamDef {
        name: "refunds",
        schema: include_str!("../../../schemas/stripe/refunds.json"),
        list_path: "/v1/refunds",
        list_params: &[],
        // `charge.refund.updated` carries the refund of a charge, like `refund.updated`.
        feed: Feed::Events(&[
            "refund.created",
            "refund.updated",
            "refund.failed",
            "charge.refund.updated",
        ]),
        settles: false,
    },
    StreamDef {
        name: "disputes",
        schema: include_str!("../../../schemas/stripe/disputes.json"),
        list_path: "/v1/disputes",
        list_params: &[],
        feed: Feed::Events(&[
            "charge.dispute.created",
            "charge.dispute.updated",
            "charge.dispute.closed",
            "charge.dispute.funds_withdrawn",
            "charge.dispute.funds_reinstated",
        ]),
        settles: false,
    },
    StreamDef {
        name: "payouts",
        schema: include_str!("../../../schemas/stripe/payouts.json"),
        list_path: "/v1/payouts",
        list_params: &[],
        feed: Feed::Events(&[
            "payout.created",
            "payout.updated",
            "payout.paid",
            "payout.failed",
            "payout.canceled",
            "payout.reconciliation_completed",
        ]),
        settles: false,
    },
    StreamDef {
        name: "balance_transactions",
        schema: include_str!("../../../schemas/stripe/balance_transactions.json"),
        list_path: "/v1/balance_transactions",
        list_params: &[],
        feed: Feed::ListOnly,
        settles: true,
    },
    StreamDef {
        name: "events",
        schema: include_str!("../../../schemas/stripe/events.json"),
        list_path: "/v1/events",
        list_params: &[],
        feed: Feed::AllEvents,
        settles: false,
    },
];

/// The stream called `name`, or [`Error::UnknownStream`] listing them.
pub fn stream(name: &str) -> Result<&'static StreamDef> {
    tributary_sdk::connector::find_named(STREAMS, name, |s| s.name)
}

/// The parsed schemas of every stream (see [`tributary_sdk::schema::load`]).
pub fn schemas() -> Result<Vec<StreamSchema>> {
    tributary_sdk::schema::load("stripe", STREAMS.iter().map(|def| (def.name, def.schema)))
}

/// Where a read resumes: the cursor committed with every page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Cursor {
    /// Walking the list endpoint newest-first.
    Backfill {
        /// The last object id landed; the walk continues after it (`None`: from the top).
        starting_after: Option<String>,
        /// The newest object of the feed when the backfill began (`None`: there was none).
        anchor: Option<String>,
        /// Stripe's clock when the backfill began (Unix seconds).
        since: i64,
        /// `created` of the oldest object landed still `pending` (streams that settle).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pending_since: Option<i64>,
        /// A backfill read as `created` ranges at once: the ranges not finished yet, each
        /// where its last landed page ended (`starting_after` is then unused).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ranges: Option<Vec<Range>>,
    },
    /// Following the feed forward from `anchor`.
    Changes {
        /// The newest feed object applied (`None`: none existed when the backfill began).
        anchor: Option<String>,
        /// When the anchor was created (Unix seconds); `since` when there is no anchor.
        anchor_created: i64,
        /// Stripe's clock when the backfill began, or when a quiet feed's cursor was
        /// re-based (Unix seconds). With no anchor, changes are the feed's objects created
        /// at or after it.
        since: i64,
        /// `created` of the oldest object landed still `pending` (streams that settle): the
        /// next run lists again from there.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pending_since: Option<i64>,
    },
}

/// One `created` range of a concurrent backfill: the objects created in `[gte, lt)`,
/// walked newest-first like the whole list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    /// Objects created at or after this (Unix seconds; `created[gte]`).
    pub gte: i64,
    /// Objects created before this (`created[lt]`).
    pub lt: i64,
    /// The last object landed from this range; the walk goes on after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starting_after: Option<String>,
    /// That object's `created`: where the range restarts if Stripe no longer knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_created: Option<i64>,
}

impl Range {
    /// The SDK's range, the walk's position being the `starting_after` id.
    fn into_sdk(self) -> ranges::Range<String> {
        ranges::Range {
            gte: self.gte,
            lt: self.lt,
            position: self.starting_after,
            last: self.last_created,
        }
    }

    fn from_sdk(range: ranges::Range<String>) -> Self {
        Range {
            gte: range.gte,
            lt: range.lt,
            starting_after: range.position,
            last_created: range.last,
        }
    }
}

/// Reads stream `def` (whose schema is `schema`) from `cursor` (or from scratch), fetching
/// ahead of the consumer.
pub fn read(
    client: Arc<StripeClient>,
    def: &'static StreamDef,
    schema: &StreamSchema,
    page_size: u32,
    max_concurrency: u32,
    cursor: Option<Cursor>,
    full_refresh: bool,
) -> PageStream {
    let declared = schema.columns.iter().map(|c| c.name.clone()).collect();
    spawn_pages(FETCH_AHEAD, move |tx| {
        let reader = Reader {
            client,
            def,
            declared,
            page_size,
            max_concurrency: max_concurrency.max(1) as usize,
            tx,
            catch_up: std::sync::Mutex::new(None),
        };
        reader.run(if full_refresh { None } else { cursor }, full_refresh)
    })
}

/// A backfill in progress.
#[derive(Debug, Clone)]
struct BackfillAt {
    starting_after: Option<String>,
    anchor: Option<String>,
    /// Known when this read found the anchor; a resumed backfill only has `since`.
    anchor_created: Option<i64>,
    since: i64,
    pending_since: Option<i64>,
    /// The open ranges of a concurrent backfill.
    ranges: Option<Vec<Range>>,
}

/// The anchor of a concurrent backfill being read alongside its first pages (see
/// `Reader::backfill_from_now`): the newest feed event before the cutoff, with the local
/// time its answer arrived and how long after the backfill started (monotonic).
struct Anchoring {
    task: tokio::task::JoinSet<Result<AnchorAnswer>>,
    /// The line between listing and events (local Unix seconds).
    cutoff: i64,
}

/// The most page bytes a concurrent backfill holds while its anchor is out (a few dozen
/// pages of 100 objects; less in tests, which check that the cap holds).
const HELD_BYTES: usize = if cfg!(test) { 256 << 10 } else { 32 << 20 };

/// The anchor request's answer, the local time it arrived and how long after the backfill
/// started.
type AnchorAnswer = (Listing, DateTime<Utc>, std::time::Duration);

impl Anchoring {
    /// The anchor and its `created` from the anchor task's `answer`, once Stripe's clock
    /// (the answer's `Date`) shows the line safe (see [`clocks_in_step`]); `None` when it
    /// does not.
    fn settle(
        &self,
        answer: Option<std::result::Result<Result<AnchorAnswer>, tokio::task::JoinError>>,
        stream: &str,
    ) -> Result<Option<(Option<String>, Option<i64>)>> {
        let (listing, arrived, elapsed) = match answer {
            Some(Ok(answer)) => answer?,
            Some(Err(e)) => {
                return Err(Error::protocol(
                    VENDOR,
                    stream,
                    format!("the anchor request task failed: {e}"),
                ));
            }
            None => return Ok(None),
        };
        let Some(date) = listing.date else {
            return Ok(None);
        };
        if !clocks_in_step(self.cutoff, date, elapsed, arrived) {
            return Ok(None);
        }
        Ok(Some((
            listing.envelope.first_id.clone(),
            listing.first_created(),
        )))
    }
}

/// Whether the anchor's answer shows the line `cutoff` (local Unix seconds) safe to draw:
/// Stripe dated the answer `date` and it arrived `elapsed` after the backfill started (on
/// the monotonic clock, so a step of the local clock cannot hide a lead), at local time
/// `arrived`.
///
/// Stripe answered at `date` or within the second after (`Date` has whole seconds), so
/// when the backfill started Stripe's clock read at least `date − elapsed`, and every
/// range request reached Stripe at or after that. The line holds when that is at or after
/// the cutoff: the local clock leads Stripe's by under about 9 s. Stripe's clock may also
/// not lead by more than `CLOCK_MARGIN_SECS`, or events between the cutoff and Stripe's
/// now could pass retention for a local clock far behind.
pub(crate) fn clocks_in_step(
    cutoff: i64,
    date: DateTime<Utc>,
    elapsed: std::time::Duration,
    arrived: DateTime<Utc>,
) -> bool {
    let stripe_at_start = date.timestamp() as f64 - elapsed.as_secs_f64();
    stripe_at_start >= cutoff as f64 && date.timestamp() - arrived.timestamp() <= CLOCK_MARGIN_SECS
}

/// A changes phase in progress.
#[derive(Debug, Clone)]
struct ChangesAt {
    anchor: Option<String>,
    anchor_created: i64,
    since: i64,
    pending_since: Option<i64>,
}

impl ChangesAt {
    fn cursor(&self) -> Cursor {
        Cursor::Changes {
            anchor: self.anchor.clone(),
            anchor_created: self.anchor_created,
            since: self.since,
            pending_since: self.pending_since,
        }
    }
}

/// What to do next.
enum Step {
    /// A backfill from the top, replacing the table when `reset`.
    Fresh {
        reset: bool,
    },
    Backfill(BackfillAt),
    /// Following the changes; `true` when objects landed pending by an earlier run are to
    /// be read again first (not right after this read's own backfill landed them).
    Changes(ChangesAt, bool),
}

/// How a phase ended.
enum Outcome {
    /// Caught up, or the consumer went away.
    Done,
    /// The backfill is complete; follow the changes from here.
    Changes(ChangesAt),
    /// The cursor cannot be followed; read the stream again in full.
    Lost(Lost),
}

#[derive(Debug, Clone, Copy)]
enum Lost {
    /// The events after the anchor are past Stripe's retention.
    Retention,
    /// The object a backfill was to continue after no longer exists.
    StartingAfter,
}

/// A Stripe list page parsed.
#[derive(Deserialize)]
struct List<T> {
    data: Vec<T>,
}

/// The `created` and `status` of a listed object.
#[derive(Deserialize)]
struct Settling {
    #[serde(default)]
    created: Option<i64>,
    #[serde(default)]
    status: Option<String>,
}

struct Reader {
    client: Arc<StripeClient>,
    def: &'static StreamDef,
    /// The stream's declared columns, which an object rendered in another API version is
    /// cut down to (see [`Reader::latest_objects`]).
    declared: Vec<String>,
    page_size: u32,
    /// Most list requests in flight in a concurrent backfill.
    max_concurrency: usize,
    tx: PageSender,
    /// The changes' first request, sent while a concurrent backfill ends (see
    /// [`Reader::send_catch_up`]).
    catch_up: std::sync::Mutex<Option<CatchUp>>,
}

/// The first request of the changes after a concurrent backfill, sent before the
/// backfill's last pages are in: its path and query, and the request.
struct CatchUp {
    path: &'static str,
    query: Vec<(&'static str, String)>,
    task: tokio::task::JoinSet<Result<Listing>>,
}

impl Reader {
    async fn run(self, cursor: Option<Cursor>, full_refresh: bool) -> Result<()> {
        let stream = self.def.name;
        let mut step = match cursor {
            None => Step::Fresh {
                reset: full_refresh,
            },
            Some(Cursor::Backfill {
                starting_after,
                anchor,
                since,
                pending_since,
                ranges,
            }) => Step::Backfill(BackfillAt {
                starting_after,
                anchor,
                anchor_created: None,
                since,
                pending_since,
                ranges,
            }),
            Some(Cursor::Changes {
                anchor,
                anchor_created,
                since,
                pending_since,
            }) => Step::Changes(
                ChangesAt {
                    anchor,
                    anchor_created,
                    since,
                    pending_since,
                },
                true,
            ),
        };
        // Only a cursor of an earlier run can be past retention: an anchor this read found
        // is the newest event Stripe still has, however old.
        let mut check_age = true;
        let mut fell_back = false;
        loop {
            let outcome = match step {
                Step::Fresh { reset } => {
                    check_age = false;
                    self.backfill(None, reset).await?
                }
                Step::Backfill(at) => self.backfill(Some(at), false).await?,
                Step::Changes(at, resettle) => self.changes(at, check_age, resettle).await?,
            };
            step = match outcome {
                Outcome::Done => return Ok(()),
                Outcome::Changes(at) => {
                    tracing::debug!(stream, "Backfill complete; following the changes.");
                    Step::Changes(at, false)
                }
                Outcome::Lost(_) if fell_back => {
                    return Err(Error::Cursor {
                        stream: stream.to_owned(),
                        message: "Stripe lost the position of a backfill this run started; \
                                  run the sync again"
                            .to_owned(),
                    });
                }
                Outcome::Lost(Lost::Retention) => {
                    tracing::warn!(
                        stream,
                        "The committed cursor is older than Stripe's 30-day event retention; resyncing the stream in full."
                    );
                    fell_back = true;
                    Step::Fresh { reset: true }
                }
                Outcome::Lost(Lost::StartingAfter) => {
                    tracing::warn!(
                        stream,
                        "The object the backfill was to continue after no longer exists; resyncing the stream in full."
                    );
                    fell_back = true;
                    Step::Fresh { reset: true }
                }
            };
        }
    }

    /// Hands a page to the runtime; `false` when the read was cancelled.
    async fn emit(&self, records: Records, cursor: &Cursor, reset: bool) -> bool {
        self.tx
            .send(Page::with_cursor(records, cursor).resetting(reset))
            .await
    }

    /// Walks the list endpoint from `at` (or from the top of a new backfill).
    async fn backfill(&self, at: Option<BackfillAt>, mut reset: bool) -> Result<Outcome> {
        // Immutable streams anchor on the newest object of their first list page: the list
        // is their feed, so the backfill and the changes meet exactly there.
        let mut anchor_from_list =
            at.is_none() && matches!(self.def.feed, Feed::AllEvents | Feed::ListOnly);
        let mut at = match at {
            Some(at) => at,
            None if anchor_from_list => BackfillAt {
                starting_after: None,
                anchor: None,
                anchor_created: None,
                since: Utc::now().timestamp(),
                pending_since: None,
                ranges: None,
            },
            None => {
                if self.concurrent()
                    && let Some(outcome) = self.backfill_from_now(reset).await?
                {
                    return Ok(outcome);
                }
                let mut at = self.begin_backfill().await?;
                if self.concurrent() {
                    at.ranges = Some(initial_ranges(at.since, self.max_concurrency));
                }
                at
            }
        };
        if let Some(ranges) = at.ranges.take() {
            // Without an anchor to wait for, a concurrent backfill always finishes.
            return self
                .backfill_ranges(at, ranges, reset, None)
                .await?
                .ok_or_else(|| {
                    Error::protocol(VENDOR, self.def.name, "a resumed backfill lost its anchor")
                });
        }
        let mut guard = self.list_guard();
        if let Some(after) = &at.starting_after {
            guard.start_at(after);
        }
        loop {
            let mut query = self.list_query();
            if let Some(after) = &at.starting_after {
                query.push(("starting_after", after.clone()));
            }
            let listing = match self.list(self.def.list_path, &query).await {
                Ok(listing) => listing,
                Err(e)
                    if at
                        .starting_after
                        .as_deref()
                        .is_some_and(|id| is_missing(&e, id)) =>
                {
                    return Ok(Outcome::Lost(Lost::StartingAfter));
                }
                Err(e) => return Err(e),
            };
            if anchor_from_list {
                anchor_from_list = false;
                at.anchor = listing.envelope.first_id.clone();
                at.anchor_created = listing.first_created();
                at.since = unix(listing.date);
            }
            let has_more = listing.has_more();
            if has_more {
                let next = self.next_after(&mut guard, &listing)?;
                at.starting_after = Some(next);
            }
            if self.def.settles {
                at.pending_since = older(at.pending_since, oldest_pending(&listing.body));
            }
            let records = if listing.envelope.count == 0 {
                Records::Values(Vec::new())
            } else if let Feed::SubscriptionItems(_) = self.def.feed {
                Records::Values(self.items_of_subscriptions(&listing.body).await?)
            } else {
                Records::Json {
                    body: listing.body,
                    path: &["data"],
                }
            };
            if has_more {
                let cursor = Cursor::Backfill {
                    starting_after: at.starting_after.clone(),
                    anchor: at.anchor.clone(),
                    since: at.since,
                    pending_since: at.pending_since,
                    ranges: None,
                };
                if !self.emit(records, &cursor, reset).await {
                    return Ok(Outcome::Done);
                }
                reset = false;
            } else {
                let next = ChangesAt {
                    anchor: at.anchor.clone(),
                    anchor_created: at.anchor_created.unwrap_or(at.since),
                    since: at.since,
                    pending_since: at.pending_since,
                };
                if !self.emit(records, &next.cursor(), reset).await {
                    return Ok(Outcome::Done);
                }
                return Ok(Outcome::Changes(next));
            }
        }
    }

    /// Whether this stream's backfill is read as `created` ranges at once: streams whose
    /// changes come from events (their list is only the backfill, every object has a
    /// `created`, and the anchor fixed before the backfill covers what changes during
    /// it). The events feed, immutable lists, subscription items and invoice items (listed
    /// by `date` in older API versions) stay one walk.
    fn concurrent(&self) -> bool {
        self.max_concurrency > 1 && matches!(self.def.feed, Feed::Events(_)) && !self.def.settles
    }

    /// A backfill read as `created` ranges at once (see [`Range`]), by the SDK's
    /// [`RangeReader`] (how many requests are in flight, how ranges split, and why a
    /// committed cursor is exact are documented there).
    ///
    /// Stripe's list endpoints filter on `created[gte]`/`created[lt]` and page newest first
    /// with `starting_after`, "an object ID that defines your place in the list"
    /// (https://docs.stripe.com/api/pagination, https://docs.stripe.com/api/charges/list):
    /// a place in the list, so it stays valid when a range's lower bound moves up past
    /// objects the walk has not reached (a split keeps the walk in the newer part). The
    /// anchor was fixed before the first range was read, so changes made while the
    /// backfill runs come from the events afterwards.
    ///
    /// With `anchoring`, the anchor is still being read: no page is handed on before it
    /// has arrived and Stripe's clock has been checked, and `None` means the check failed
    /// (nothing was handed on; see [`Reader::backfill_from_now`]). The ranges are read on
    /// meanwhile: pages that arrive before the anchor wait, each with the ranges as they
    /// stood when it came, so the reader keeps its requests going instead of losing the
    /// rest of a round trip to the anchor.
    async fn backfill_ranges(
        &self,
        mut at: BackfillAt,
        ranges: Vec<Range>,
        mut reset: bool,
        mut anchoring: Option<Anchoring>,
    ) -> Result<Option<Outcome>> {
        let stream = self.def.name;
        let mut settings = ranges::settings(
            VENDOR,
            stream,
            Order::Descending,
            self.page_size as usize,
            self.max_concurrency,
        );
        settings.position_name = "pagination cursor `starting_after`".to_owned();
        settings.still = "has_more stayed true".to_owned();
        let client = Arc::clone(&self.client);
        let (path, base) = (self.def.list_path, self.list_query());
        let fetch: Fetch<String, Listing> = Box::new(move |range: ranges::Range<String>| {
            let (client, mut query) = (Arc::clone(&client), base.clone());
            Box::pin(async move {
                query.push(("created[gte]", range.gte.to_string()));
                query.push(("created[lt]", range.lt.to_string()));
                if let Some(after) = &range.position {
                    query.push(("starting_after", after.clone()));
                }
                let listing = match client.list(stream, path, &query).await {
                    Ok(listing) => listing,
                    Err(e) => {
                        return match &range.position {
                            // Stripe no longer knows the object the range was to continue
                            // after (deleted): list the range again from that object's
                            // second.
                            Some(after) if is_missing(&e, after) => {
                                tracing::warn!(
                                    stream,
                                    "The object a backfill range was to continue after no longer exists; reading the range again from its time."
                                );
                                let lt = range.last.map_or(range.lt, |c| range.lt.min(c + 1));
                                Ok(Answer::Restart(ranges::Range::new(range.gte, lt)))
                            }
                            _ => Err(e),
                        };
                    }
                };
                let next = if listing.has_more() {
                    match &listing.envelope.last_id {
                        Some(id) => Some(id.clone()),
                        // `has_more` with no objects: the reader refuses a page that
                        // promises more and moves nothing.
                        None if listing.envelope.count == 0 => Some(String::new()),
                        None => {
                            return Err(Error::decode(
                                format!("GET {path} response"),
                                "the last object of a page has no `id`",
                            ));
                        }
                    }
                } else {
                    None
                };
                Ok(Answer::Page(Fetched {
                    last: listing.last_created(),
                    count: listing.envelope.count,
                    next,
                    page: listing,
                }))
            })
        });
        let mut reader = RangeReader::new(
            settings,
            self.client.http_for(path)?,
            ranges.into_iter().map(Range::into_sdk).collect(),
            fetch,
        );
        let mut done = ChangesAt {
            anchor: at.anchor.clone(),
            anchor_created: at.anchor_created.unwrap_or(at.since),
            since: at.since,
            pending_since: at.pending_since,
        };
        // Pages read while the anchor is out: each with the open ranges and whether the
        // read was done when it was handed out, which its cursor is to say.
        type Held = (ranges::Step<Listing>, Vec<Range>, bool);
        let held_of = |step, reader: &RangeReader<String, Listing>| -> Held {
            (
                step,
                reader.open().cloned().map(Range::from_sdk).collect(),
                reader.is_done(),
            )
        };
        let mut held: std::collections::VecDeque<Held> = std::collections::VecDeque::new();
        let (mut read_all, mut held_bytes) = (false, 0);
        loop {
            if let Some(pending) = anchoring.as_mut() {
                let answer = tokio::select! {
                    biased;
                    answer = pending.task.join_next() => answer,
                    // `next` waits only in a `JoinSet::join_next` (and a timer), which
                    // lose nothing when the anchor comes first and this is dropped.
                    // An anchor slow to come (retried, say) holds at most `HELD_BYTES` of
                    // pages; the reader then waits with it.
                    step = reader.next(), if !read_all && held_bytes < HELD_BYTES => {
                        match step? {
                            Some(step) => {
                                held_bytes += step.page.body.len();
                                held.push_back(held_of(step, &reader));
                            }
                            None => read_all = true,
                        }
                        continue;
                    }
                };
                let Some((anchor, anchor_created)) = pending.settle(answer, stream)? else {
                    return Ok(None);
                };
                anchoring = None;
                at.anchor = anchor;
                at.anchor_created = anchor_created;
                done.anchor = at.anchor.clone();
                done.anchor_created = at.anchor_created.unwrap_or(at.since);
                continue;
            }
            let (step, open, is_done) = match held.pop_front() {
                Some(held) => held,
                None => match reader.next().await? {
                    Some(step) => held_of(step, &reader),
                    None => break,
                },
            };
            if reader.ending() {
                self.send_catch_up(&done);
            }
            let records = if step.count == 0 {
                Records::Values(Vec::new())
            } else {
                Records::Json {
                    body: step.page.body,
                    path: &["data"],
                }
            };
            let cursor = if is_done {
                let stats = reader.stats();
                tracing::info!(
                    stream,
                    ranges = stats.ranges,
                    requests = stats.requests,
                    part_full_pages = stats.part_full,
                    "Concurrent backfill complete."
                );
                done.cursor()
            } else {
                Cursor::Backfill {
                    starting_after: None,
                    anchor: at.anchor.clone(),
                    since: at.since,
                    pending_since: at.pending_since,
                    ranges: Some(open),
                }
            };
            if !self.emit(records, &cursor, reset).await {
                return Ok(Some(Outcome::Done));
            }
            if is_done {
                return Ok(Some(Outcome::Changes(done)));
            }
            reset = false;
        }
        // A backfill resumed with an empty list of ranges is complete.
        if !self
            .emit(Records::Values(Vec::new()), &done.cursor(), reset)
            .await
        {
            return Ok(Some(Outcome::Done));
        }
        Ok(Some(Outcome::Changes(done)))
    }

    /// Starts a concurrent backfill without waiting for the anchor: the line between the
    /// listing and the events is drawn by the local clock, `CLOCK_MARGIN_SECS` back (call
    /// it T). The ranges list the objects created before T, and the anchor is the newest
    /// feed event created before T (`created[lt]`, https://docs.stripe.com/api/events/list),
    /// read alongside the first pages, so the backfill's first round trip is not spent
    /// waiting for it. An object created at T or later has its events at T or later,
    /// after the anchor, so the changes that follow bring it.
    ///
    /// That holds when every range request reached Stripe after T by Stripe's clock. The
    /// anchor's answer bounds the difference (see [`clocks_in_step`]): Stripe answered at
    /// its `Date`, so when the backfill started Stripe's clock read at least `Date` minus
    /// the time the answer took. Outside that, nothing has been handed on yet: `None`, and
    /// the caller starts over from Stripe's clock.
    async fn backfill_from_now(&self, reset: bool) -> Result<Option<Outcome>> {
        let started = std::time::Instant::now();
        let cutoff = Utc::now().timestamp() - CLOCK_MARGIN_SECS;
        let (path, mut query) = self.feed_query();
        if let Some(limit) = query.iter_mut().find(|(k, _)| *k == "limit") {
            limit.1 = "1".to_owned();
        }
        query.push(("created[lt]", cutoff.to_string()));
        let (client, stream) = (Arc::clone(&self.client), self.def.name);
        let mut task = tokio::task::JoinSet::new();
        task.spawn(async move {
            let listing = client.list(stream, path, &query).await?;
            Ok((listing, Utc::now(), started.elapsed()))
        });
        // The ranges hold the objects created before `cutoff`: `since + 1` is their top.
        let since = cutoff - 1;
        let at = BackfillAt {
            starting_after: None,
            anchor: None,
            anchor_created: None,
            since,
            pending_since: None,
            ranges: None,
        };
        let ranges = initial_ranges(since, self.max_concurrency);
        let outcome = self
            .backfill_ranges(at, ranges, reset, Some(Anchoring { task, cutoff }))
            .await?;
        if outcome.is_none() {
            tracing::warn!(
                stream,
                "This machine's clock differs from Stripe's by more than {CLOCK_MARGIN_SECS} s; \
                 starting the backfill from Stripe's clock instead (one round trip more)."
            );
        }
        Ok(outcome)
    }

    /// Notes the newest event of the stream's feed and Stripe's clock.
    async fn begin_backfill(&self) -> Result<BackfillAt> {
        let (path, mut query) = self.feed_query();
        if let Some(limit) = query.iter_mut().find(|(k, _)| *k == "limit") {
            limit.1 = "1".to_owned();
        }
        let listing = self.list(path, &query).await?;
        let anchor = listing.envelope.first_id.clone();
        let anchor_created = listing.first_created();
        Ok(BackfillAt {
            starting_after: None,
            anchor,
            anchor_created,
            since: unix(listing.date),
            pending_since: None,
            ranges: None,
        })
    }

    /// Follows the feed forward from `at` until caught up.
    async fn changes(&self, mut at: ChangesAt, check_age: bool, resettle: bool) -> Result<Outcome> {
        if self.def.settles && resettle && !self.resettle(&mut at).await? {
            return Ok(Outcome::Done);
        }
        let (path, query) = self.feed_query();
        // Balance transactions are kept forever; only events expire.
        let mut checked = !check_age || matches!(self.def.feed, Feed::ListOnly);
        let anchor = match at.anchor.clone() {
            Some(anchor) => anchor,
            None => {
                let mut created = query.clone();
                created.push(("created[gte]", at.since.to_string()));
                let (oldest, date) = self.oldest(path, &created).await?;
                if !checked && self.expired(at.since, date) {
                    return Ok(Outcome::Lost(Lost::Retention));
                }
                checked = true;
                let Some(oldest) = oldest else {
                    return self.caught_up(&at, date).await;
                };
                let Some((id, created)) = id_and_created(&oldest) else {
                    return Err(self.no_id(path));
                };
                if self.def.settles {
                    at.pending_since = older(
                        at.pending_since,
                        oldest_pending_of(std::slice::from_ref(&oldest)),
                    );
                }
                let records = self.records(vec![oldest]).await?;
                at.anchor = Some(id.clone());
                at.anchor_created = created;
                if !self
                    .emit(Records::Values(records), &at.cursor(), false)
                    .await
                {
                    return Ok(Outcome::Done);
                }
                id
            }
        };
        let mut anchor = anchor;
        // Each page's newest event is the next page's `ending_before`: an anchor that comes
        // back means Stripe is serving events this walk already delivered.
        let mut guard = ProgressGuard::new(
            VENDOR,
            self.def.name,
            format!("`ending_before` anchor of {path}"),
            "has_more stayed true",
        );
        guard.start_at(&anchor);
        loop {
            let mut q = query.clone();
            q.push(("ending_before", anchor.clone()));
            let listing = match self.list(path, &q).await {
                Ok(listing) => listing,
                Err(e) if is_missing(&e, &anchor) => return Ok(Outcome::Lost(Lost::Retention)),
                Err(e) => return Err(e),
            };
            if !checked {
                if self.expired(at.anchor_created, listing.date) {
                    return Ok(Outcome::Lost(Lost::Retention));
                }
                checked = true;
            }
            if listing.envelope.count == 0 {
                if listing.has_more() {
                    return Err(guard.no_progress("an empty `data` array"));
                }
                return self.caught_up(&at, listing.date).await;
            }
            let page: List<Value> = parse(path, &listing.body)?;
            let mut objects = page.data;
            let Some((newest, created)) = objects.first().and_then(id_and_created) else {
                return Err(self.no_id(path));
            };
            guard.follow(&newest)?;
            objects.reverse();
            if self.def.settles {
                at.pending_since = older(at.pending_since, oldest_pending_of(&objects));
            }
            let records = self.records(objects).await?;
            at.anchor = Some(newest.clone());
            at.anchor_created = created;
            if !self
                .emit(Records::Values(records), &at.cursor(), false)
                .await
            {
                return Ok(Outcome::Done);
            }
            if !listing.has_more() {
                return Ok(Outcome::Done);
            }
            anchor = newest;
        }
    }

    /// The oldest object of the feed matching `query` (walking it newest-first to the end)
    /// and Stripe's clock at the last response.
    async fn oldest(
        &self,
        path: &str,
        query: &[(&'static str, String)],
    ) -> Result<(Option<Value>, Option<DateTime<Utc>>)> {
        let mut after: Option<String> = None;
        let mut last_full: Option<Bytes> = None;
        let mut guard = self.list_guard();
        loop {
            let mut q = query.to_vec();
            if let Some(after) = &after {
                q.push(("starting_after", after.clone()));
            }
            let listing = self.list(path, &q).await?;
            if listing.envelope.count > 0 {
                last_full = Some(listing.body.clone());
            }
            if listing.has_more() {
                after = Some(self.next_after(&mut guard, &listing)?);
            } else {
                let oldest = match last_full {
                    Some(body) => parse::<Value>(path, &body)?.data.pop(),
                    None => None,
                };
                return Ok((oldest, listing.date));
            }
        }
    }

    /// One list page of `path` for this stream: the catch-up's answer when it is that
    /// request (a catch-up sent for any other is dropped: the read went another way).
    async fn list(&self, path: &str, query: &[(&str, String)]) -> Result<Listing> {
        let sent = self
            .catch_up
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(mut sent) = sent
            && sent.path == path
            && sent.query.len() == query.len()
            && sent
                .query
                .iter()
                .zip(query)
                .all(|(a, b)| a.0 == b.0 && a.1 == b.1)
            && let Some(Ok(answer)) = sent.task.join_next().await
        {
            return answer;
        }
        self.client.list(self.def.name, path, query).await
    }

    /// Sends the first request of the changes that follow a concurrent backfill about to
    /// end at `done` (once), so that its answer is in when the last pages are: the catch-up
    /// then costs no round trip after them. It is the request [`Reader::changes`] starts
    /// with: the feed after the anchor, or from `since` when the feed had no anchor.
    ///
    /// Events made after it was answered are left to the next run, as the changes made
    /// while a backfill runs may be; the cursor stays at the last event it delivered.
    /// Sent at most a few round trips early (`RangeReader::ending`), it holds the table
    /// about as current as a request after the last page would.
    fn send_catch_up(&self, done: &ChangesAt) {
        let mut slot = self
            .catch_up
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.is_some() {
            return;
        }
        let (path, mut query) = self.feed_query();
        match &done.anchor {
            Some(anchor) => query.push(("ending_before", anchor.clone())),
            None => query.push(("created[gte]", done.since.to_string())),
        }
        let (client, stream, sent) = (Arc::clone(&self.client), self.def.name, query.clone());
        let mut task = tokio::task::JoinSet::new();
        task.spawn(async move { client.list(stream, path, &sent).await });
        tracing::debug!(stream, "The backfill is ending; catch-up request sent.");
        *slot = Some(CatchUp { path, query, task });
    }

    /// A guard for one `starting_after` walk of this stream.
    fn list_guard(&self) -> ProgressGuard {
        ProgressGuard::new(
            VENDOR,
            self.def.name,
            "pagination cursor `starting_after`",
            "has_more stayed true",
        )
    }

    /// The `starting_after` after a page that says `has_more`: its last object's id, which
    /// must be one this walk has not followed yet. Stripe pages with "the ID of the last
    /// object in the list" as the next `starting_after`
    /// (https://docs.stripe.com/api/pagination), so a page with `has_more` and no objects,
    /// or whose last id comes back, cannot move the walk.
    fn next_after(&self, guard: &mut ProgressGuard, listing: &Listing) -> Result<String> {
        if listing.envelope.count == 0 {
            return Err(guard.no_progress("an empty `data` array"));
        }
        let last = listing.envelope.last_id.clone().ok_or_else(|| {
            Error::decode(
                format!("GET {} response", self.def.list_path),
                "the last object of a page has no `id`",
            )
        })?;
        guard.follow(&last)?;
        Ok(last)
    }

    /// Nothing follows the cursor `at` as of Stripe's clock `date`.
    ///
    /// A cursor that stays put ages towards Stripe's 30-day retention although nothing was
    /// missed, and would then force a full resync of a quiet stream. So once its time
    /// reference is a day old, it is re-based on Stripe's clock: "no event of the feed
    /// after the anchor as of `now`" and "none created at or after `now`" (no anchor,
    /// `since = now`) are the same position. Balance transactions do not expire.
    async fn caught_up(&self, at: &ChangesAt, date: Option<DateTime<Utc>>) -> Result<Outcome> {
        if matches!(self.def.feed, Feed::ListOnly) {
            return Ok(Outcome::Done);
        }
        let now = date
            .unwrap_or_else(|| self.client.clock().now())
            .timestamp();
        let reference = match at.anchor {
            Some(_) => at.anchor_created,
            None => at.since,
        };
        if now - reference < REBASE_AFTER_SECS {
            return Ok(Outcome::Done);
        }
        let rebased = ChangesAt {
            anchor: None,
            anchor_created: now,
            since: now,
            pending_since: at.pending_since,
        };
        tracing::debug!(
            stream = self.def.name,
            since = now,
            "No changes for a day; re-basing the cursor on Stripe's clock."
        );
        self.emit(Records::Values(Vec::new()), &rebased.cursor(), false)
            .await;
        Ok(Outcome::Done)
    }

    /// The records of feed objects given oldest first.
    async fn records(&self, objects: Vec<Value>) -> Result<Vec<Record>> {
        match self.def.feed {
            Feed::AllEvents | Feed::ListOnly => Ok(objects
                .into_iter()
                .map(|value| Record {
                    value,
                    is_deleted: false,
                })
                .collect()),
            Feed::Events(_) => self.latest_objects(objects).await,
            Feed::SubscriptionItems(_) => {
                let removed = removed_items(&objects, self.client.stripe_version());
                let subscriptions = self.latest_objects(objects).await?;
                let mut items = Vec::new();
                for subscription in subscriptions {
                    items.extend(
                        self.items_of(subscription.value, subscription.is_deleted)
                            .await?,
                    );
                }
                let mut full: HashMap<String, Vec<String>> = HashMap::new();
                for removal in removed {
                    if !removal.certain {
                        // The event's list was cut short: compare with the whole list.
                        if !full.contains_key(&removal.subscription) {
                            let ids = self
                                .all_items(&removal.subscription)
                                .await?
                                .iter()
                                .filter_map(|i| i.get("id").and_then(Value::as_str))
                                .map(str::to_owned)
                                .collect();
                            full.insert(removal.subscription.clone(), ids);
                        }
                        let id = removal.item.get("id").and_then(Value::as_str);
                        if full[&removal.subscription]
                            .iter()
                            .any(|k| Some(k.as_str()) == id)
                        {
                            continue;
                        }
                    }
                    let value = if removal.current {
                        removal.item
                    } else {
                        self.cut_down(removal.item)
                    };
                    items.push(Record {
                        value,
                        is_deleted: true,
                    });
                }
                Ok(latest_by_id(items))
            }
            Feed::InvoiceItems(_) => {
                let mut invoices: Vec<String> = Vec::new();
                let mut item_events = Vec::with_capacity(objects.len());
                for event in objects {
                    let kind = event.get("type").and_then(Value::as_str).unwrap_or("");
                    if kind.starts_with("invoice.") {
                        if let Some(id) = event.pointer("/data/object/id").and_then(Value::as_str)
                            && !invoices.iter().any(|i| i == id)
                        {
                            invoices.push(id.to_owned());
                        }
                    } else {
                        item_events.push(event);
                    }
                }
                let mut records = self.latest_objects(item_events).await?;
                for invoice in invoices {
                    records.extend(
                        self.invoice_items(&invoice)
                            .await?
                            .into_iter()
                            .map(|value| Record {
                                value,
                                is_deleted: false,
                            }),
                    );
                }
                Ok(latest_by_id(records))
            }
        }
    }

    /// The newest version of each object changed by `events` (given oldest first), in the
    /// order of their last change, each in the pinned API version's shape.
    ///
    /// Stripe renders an event's `data.object` in the API version the account had when the
    /// event was created, not in the `Stripe-Version` a client reads it with ("api_version:
    /// The Stripe API version used to render `data`",
    /// https://docs.stripe.com/api/events/object#event_object-api_version;
    /// https://docs.stripe.com/upgrades#how-can-i-upgrade-my-api). Landing such payloads would
    /// mix two shapes in one table (columns that exist in one version only). So an object
    /// whose last event is in another version is fetched again at the pinned version (one
    /// GET per distinct object per page, through the account's rate limit); one Stripe no
    /// longer has is left to its deletion event. A deletion in another version cannot be
    /// fetched (the object is gone): it lands cut down to the stream's declared columns.
    async fn latest_objects(&self, events: Vec<Value>) -> Result<Vec<Record>> {
        let pinned = self.client.stripe_version().to_owned();
        let changes = latest_changes(
            events
                .into_iter()
                .filter_map(|event| self.object_of(event, &pinned)),
        );
        let fetch: Vec<String> = changes
            .iter()
            .filter(|c| !c.current && !c.deleted)
            .map(|c| c.id.clone())
            .collect();
        let mut fetched: HashMap<String, Option<Value>> = HashMap::with_capacity(fetch.len());
        if !fetch.is_empty() {
            tracing::debug!(
                stream = self.def.name,
                objects = fetch.len(),
                version = %pinned,
                "Fetching objects whose events are rendered in another API version."
            );
            let mut answers = futures::stream::iter(fetch.into_iter().map(|id| async move {
                let path = format!("{}/{id}", self.def.list_path);
                let object = self.client.retrieve(self.def.name, &path).await?;
                Ok::<_, Error>((id, object))
            }))
            .buffered(REFETCH_CONCURRENCY);
            while let Some(answer) = answers.next().await {
                let (id, object) = answer?;
                fetched.insert(id, object);
            }
        }
        let mut records = Vec::with_capacity(changes.len());
        for change in changes {
            let value = if change.current {
                change.object
            } else if change.deleted {
                self.cut_down(change.object)
            } else {
                match fetched.remove(&change.id).flatten() {
                    // Stripe answers a deleted customer (and a few other types) with a stub
                    // `{"id", "object", "deleted": true}`: the object is gone, so it lands
                    // as a deletion with what the event knew of it.
                    Some(object) if object.get("deleted") == Some(&Value::Bool(true)) => {
                        records.push(Record {
                            value: self.cut_down(change.object),
                            is_deleted: true,
                        });
                        continue;
                    }
                    Some(object) => object,
                    None => {
                        tracing::debug!(stream = self.def.name, id = %change.id, "The object is gone; its deletion event lands it.");
                        continue;
                    }
                }
            };
            records.push(Record {
                value,
                is_deleted: change.deleted,
            });
        }
        Ok(records)
    }

    /// An object rendered in another API version, cut down to the top-level fields that
    /// feed the stream's declared columns (`address` feeds `address_city`), so it adds no
    /// column the pinned version does not have.
    fn cut_down(&self, object: Value) -> Value {
        let Value::Object(fields) = object else {
            return object;
        };
        Value::Object(
            fields
                .into_iter()
                .filter(|(key, _)| {
                    self.declared.iter().any(|c| {
                        c == key
                            || c.strip_prefix(key.as_str())
                                .is_some_and(|rest| rest.starts_with('_'))
                    })
                })
                .collect(),
        )
    }

    /// The object of an event as a change, or `None` (logged) when it has no id.
    fn object_of(&self, event: Value, pinned: &str) -> Option<Change> {
        let found = object_of_event(event, pinned);
        if let Err(event_id) = &found {
            tracing::warn!(
                stream = self.def.name,
                event = %event_id,
                "Skipping an event whose data.object has no id."
            );
        }
        found.ok()
    }

    /// Lists again the objects that may still change without an event: from the oldest one
    /// landed `pending` up to the anchor (newer ones come with the walk that follows), and
    /// notes the oldest still pending. Balance transactions turn `available` on their
    /// `available_on` date and Stripe sends no event for it
    /// (https://docs.stripe.com/api/balance_transactions/object#balance_transaction_object-status).
    /// A transaction pending for longer than [`SETTLE_WINDOW_SECS`] is no longer followed.
    /// `false` when the read was cancelled.
    async fn resettle(&self, at: &mut ChangesAt) -> Result<bool> {
        let Some(since) = at.pending_since else {
            return Ok(true);
        };
        let floor = self.client.clock().now().timestamp() - SETTLE_WINDOW_SECS;
        if since < floor {
            tracing::warn!(
                stream = self.def.name,
                since,
                "Objects have been pending for longer than the re-read window; following only the last {} days of them.",
                SETTLE_WINDOW_SECS / 86_400
            );
        }
        let mut query = self.list_query();
        query.push(("created[gte]", since.max(floor).to_string()));
        query.push(("created[lte]", at.anchor_created.to_string()));
        let mut guard = self.list_guard();
        let mut after: Option<String> = None;
        let mut pending: Option<i64> = None;
        loop {
            let mut q = query.clone();
            if let Some(after) = &after {
                q.push(("starting_after", after.clone()));
            }
            let listing = self.list(self.def.list_path, &q).await?;
            pending = older(pending, oldest_pending(&listing.body));
            let has_more = listing.has_more();
            if has_more {
                after = Some(self.next_after(&mut guard, &listing)?);
            } else {
                // Only a complete re-read may move the mark; an interrupted one starts over.
                at.pending_since = pending;
            }
            let records = if listing.envelope.count == 0 {
                Records::Values(Vec::new())
            } else {
                Records::Json {
                    body: listing.body,
                    path: &["data"],
                }
            };
            if !self.emit(records, &at.cursor(), false).await {
                return Ok(false);
            }
            if !has_more {
                return Ok(true);
            }
        }
    }

    /// The items of every subscription in a subscriptions list page.
    async fn items_of_subscriptions(&self, body: &Bytes) -> Result<Vec<Record>> {
        let page: List<Value> = parse(self.def.list_path, body)?;
        let mut items = Vec::new();
        for subscription in page.data {
            items.extend(self.items_of(subscription, false).await?);
        }
        Ok(items)
    }

    /// The items of one subscription, each with its `subscription` id, fetching the rest
    /// when the embedded list is cut short.
    async fn items_of(&self, mut subscription: Value, is_deleted: bool) -> Result<Vec<Record>> {
        let Some(id) = subscription
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_owned)
        else {
            return Err(self.no_id("/v1/subscriptions"));
        };
        let embedded = subscription.get_mut("items").map(Value::take);
        let has_more = embedded
            .as_ref()
            .and_then(|items| items.get("has_more"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let items = if has_more && !is_deleted {
            self.all_items(&id).await?
        } else {
            match embedded.and_then(|mut items| items.get_mut("data").map(Value::take)) {
                Some(Value::Array(items)) => items,
                _ => Vec::new(),
            }
        };
        Ok(items
            .into_iter()
            .map(|mut item| {
                if let Value::Object(fields) = &mut item {
                    let parent = fields.entry("subscription").or_insert(Value::Null);
                    if parent.is_null() {
                        *parent = Value::String(id.clone());
                    }
                }
                Record {
                    value: item,
                    is_deleted,
                }
            })
            .collect())
    }

    /// Every item of subscription `id`, from `/v1/subscription_items`.
    async fn all_items(&self, id: &str) -> Result<Vec<Value>> {
        self.list_all("/v1/subscription_items", "subscription", id)
            .await
    }

    /// Every item of invoice `id` as it is now, from `/v1/invoiceitems?invoice=<id>`; none
    /// when Stripe no longer has the invoice (a draft deleted since its event).
    async fn invoice_items(&self, id: &str) -> Result<Vec<Value>> {
        match self.list_all("/v1/invoiceitems", "invoice", id).await {
            Err(e) if is_missing(&e, id) => Ok(Vec::new()),
            other => other,
        }
    }

    /// Every object of list `path` whose `filter` is `id`.
    async fn list_all(
        &self,
        path: &'static str,
        filter: &'static str,
        id: &str,
    ) -> Result<Vec<Value>> {
        const PATH_LIMIT: &str = "100";
        let mut items: Vec<Value> = Vec::new();
        let mut after: Option<String> = None;
        let mut guard = ProgressGuard::new(
            VENDOR,
            self.def.name,
            format!("`starting_after` of {path}?{filter}={id}"),
            "has_more stayed true",
        );
        loop {
            let mut query = vec![(filter, id.to_owned()), ("limit", PATH_LIMIT.to_owned())];
            if let Some(after) = &after {
                query.push(("starting_after", after.clone()));
            }
            let listing = self.list(path, &query).await?;
            if !listing.has_more() {
                items.extend(parse::<Value>(path, &listing.body)?.data);
                return Ok(items);
            }
            after = Some(self.next_after(&mut guard, &listing)?);
            items.extend(parse::<Value>(path, &listing.body)?.data);
        }
    }

    /// `limit` and the stream's own list parameters.
    fn list_query(&self) -> Vec<(&'static str, String)> {
        let mut query = vec![("limit", self.page_size.to_string())];
        query.extend(
            self.def
                .list_params
                .iter()
                .map(|(k, v)| (*k, (*v).to_owned())),
        );
        query
    }

    /// The feed's endpoint and parameters (with `limit`).
    fn feed_query(&self) -> (&'static str, Vec<(&'static str, String)>) {
        match self.def.feed {
            Feed::Events(types) | Feed::SubscriptionItems(types) | Feed::InvoiceItems(types) => {
                let mut query = vec![("limit", self.page_size.to_string())];
                query.extend(types.iter().map(|t| ("types[]", (*t).to_owned())));
                ("/v1/events", query)
            }
            Feed::AllEvents => ("/v1/events", vec![("limit", self.page_size.to_string())]),
            Feed::ListOnly => (self.def.list_path, self.list_query()),
        }
    }

    /// Whether the events after `created` may be past Stripe's retention, by Stripe's
    /// clock (`date` of the latest response, else the client's latest, else local).
    fn expired(&self, created: i64, date: Option<DateTime<Utc>>) -> bool {
        let now = date
            .unwrap_or_else(|| self.client.clock().now())
            .timestamp();
        created < now - EVENT_RETENTION_SECS + RETENTION_MARGIN_SECS
    }

    fn no_id(&self, path: &str) -> Error {
        Error::decode(
            format!("GET {path} response for stream `{}`", self.def.name),
            "an object has no `id` or `created`",
        )
    }
}

/// An object changed by an event.
#[derive(Debug)]
struct Change {
    id: String,
    /// The event's `data.object`.
    object: Value,
    /// The event deletes the object (see [`deletes`]).
    deleted: bool,
    /// The event is rendered in the pinned API version.
    current: bool,
}

/// An event's `data.object` as a [`Change`]; the event's id as the error when the object
/// has no id.
fn object_of_event(event: Value, pinned: &str) -> Result<Change, String> {
    let Value::Object(mut event) = event else {
        return Err("?".to_owned());
    };
    let event_id = event
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_owned();
    let deleted = event
        .get("type")
        .and_then(Value::as_str)
        .is_some_and(deletes);
    let current = event.get("api_version").and_then(Value::as_str) == Some(pinned);
    let object = event
        .get_mut("data")
        .and_then(|data| data.get_mut("object"))
        .map(Value::take);
    let Some(object) = object else {
        return Err(event_id);
    };
    match object.get("id").and_then(Value::as_str).map(str::to_owned) {
        Some(id) => Ok(Change {
            id,
            object,
            deleted,
            current,
        }),
        None => Err(event_id),
    }
}

/// The newest change of each object, ordered by its last change. `changes` come oldest
/// first.
fn latest_changes(changes: impl Iterator<Item = Change>) -> Vec<Change> {
    let mut slots: Vec<Option<Change>> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for change in changes {
        if let Some(previous) = index.insert(change.id.clone(), slots.len()) {
            slots[previous] = None;
        }
        slots.push(Some(change));
    }
    slots.into_iter().flatten().collect()
}

/// The last record of each `id`, in the order of their last appearance.
fn latest_by_id(records: Vec<Record>) -> Vec<Record> {
    let mut slots: Vec<Option<Record>> = Vec::with_capacity(records.len());
    let mut index: HashMap<String, usize> = HashMap::new();
    for record in records {
        let id = record
            .value
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if let Some(id) = id
            && let Some(previous) = index.insert(id, slots.len())
        {
            slots[previous] = None;
        }
        slots.push(Some(record));
    }
    slots.into_iter().flatten().collect()
}

/// An item a subscription event shows leaving its subscription.
#[derive(Debug)]
struct Removal {
    /// The item as the event's `previous_attributes` held it, with its `subscription`.
    item: Value,
    subscription: String,
    /// The event is rendered in the pinned API version.
    current: bool,
    /// The event's current `items` list was complete, so the item is surely gone; else
    /// the whole list must be read to tell.
    certain: bool,
}

/// The subscription items that subscription events removed, oldest first: the items of an
/// event's `previous_attributes.items` that its `data.object.items` no longer holds. Stripe
/// puts the old value of a changed field in `previous_attributes`
/// (https://docs.stripe.com/api/events/object#event_object-data-previous_attributes), so
/// an item deleted from a subscription shows there. When the current list is cut short
/// (`has_more`: Stripe embeds the first items only), the removal is not certain until the
/// whole list is read.
fn removed_items(events: &[Value], pinned: &str) -> Vec<Removal> {
    let mut removed = Vec::new();
    for event in events {
        let (Some(previous), Some(now), Some(sub)) = (
            event.pointer("/data/previous_attributes/items"),
            event.pointer("/data/object/items"),
            event.pointer("/data/object/id").and_then(Value::as_str),
        ) else {
            continue;
        };
        let certain = !now
            .get("has_more")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let kept: Vec<&str> = now
            .get("data")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|i| i.get("id").and_then(Value::as_str))
            .collect();
        let current = event.get("api_version").and_then(Value::as_str) == Some(pinned);
        for item in previous
            .get("data")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(id) = item.get("id").and_then(Value::as_str) else {
                continue;
            };
            if kept.contains(&id) {
                continue;
            }
            let mut item = item.clone();
            if let Value::Object(fields) = &mut item {
                fields.insert("subscription".into(), Value::String(sub.to_owned()));
            }
            removed.push(Removal {
                item,
                subscription: sub.to_owned(),
                current,
                certain,
            });
        }
    }
    removed
}

/// The oldest `created` among the `pending` objects of a list page.
fn oldest_pending(body: &[u8]) -> Option<i64> {
    serde_json::from_slice::<List<Settling>>(body)
        .ok()?
        .data
        .into_iter()
        .filter(|o| o.status.as_deref() == Some("pending"))
        .filter_map(|o| o.created)
        .min()
}

/// The oldest `created` among `pending` objects.
fn oldest_pending_of(objects: &[Value]) -> Option<i64> {
    objects
        .iter()
        .filter(|o| o.get("status").and_then(Value::as_str) == Some("pending"))
        .filter_map(|o| o.get("created").and_then(Value::as_i64))
        .min()
}

/// The older of two optional times.
fn older(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// An object's `id` and `created`.
fn id_and_created(object: &Value) -> Option<(String, i64)> {
    Some((
        object.get("id")?.as_str()?.to_owned(),
        object.get("created")?.as_i64()?,
    ))
}

/// No Stripe object is older than Stripe (its API opened in 2011): where the first
/// backfill ranges start.
pub const FLOOR: i64 = 1_293_840_000;

/// The first ranges of a concurrent backfill whose anchor was noted at `since`: `[FLOOR,
/// since + 1)` cut at a day, two, four, … before `since` (an account's objects crowd
/// towards the present), newest first, at most `n`. Empty ranges cost one request each;
/// dense ones split as they are read.
fn initial_ranges(since: i64, n: usize) -> Vec<Range> {
    ranges::geometric(
        FLOOR.min(since),
        since + 1,
        86_400,
        n.clamp(1, 128),
        Order::Descending,
    )
    .into_iter()
    .map(|(gte, lt)| Range {
        gte,
        lt,
        starting_after: None,
        last_created: None,
    })
    .collect()
}

fn parse<T: serde::de::DeserializeOwned>(path: &str, body: &[u8]) -> Result<List<T>> {
    serde_json::from_slice(body).map_err(|e| Error::decode(format!("GET {path} response"), e))
}

/// Unix seconds of Stripe's clock, or of the local clock when Stripe sent no `Date`.
fn unix(date: Option<DateTime<Utc>>) -> i64 {
    date.unwrap_or_else(Utc::now).timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tributary_sdk::cursor::{decode, encode};

    #[test]
    fn every_stream_has_a_schema_of_its_name() {
        let schemas = schemas().unwrap();
        assert_eq!(schemas.len(), STREAMS.len());
        for (def, schema) in STREAMS.iter().zip(&schemas) {
            assert_eq!(def.name, schema.name);
            assert!(def.list_path.starts_with("/v1/"), "{}", def.name);
            if let Feed::Events(types) | Feed::SubscriptionItems(types) = def.feed {
                assert!(!types.is_empty() && types.len() <= 20, "{}", def.name);
            }
        }
        let mut names: Vec<_> = STREAMS.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), 16);
        assert!(stream("charges").is_ok());
        let err = stream("nope").unwrap_err();
        assert!(
            matches!(&err, Error::UnknownStream { stream, available } if stream == "nope"
                && available.split(", ").count() == 16),
            "{err}"
        );
    }

    #[test]
    fn initial_ranges_cover_floor_to_since_newest_first() {
        for (since, n) in [
            (1_800_000_000, 32),
            (1_800_000_000, 3),
            (FLOOR + 10, 32),
            (FLOOR, 1),
        ] {
            let ranges = initial_ranges(since, n);
            assert!(
                !ranges.is_empty() && ranges.len() <= n,
                "{n}: {}",
                ranges.len()
            );
            assert_eq!(ranges[0].lt, since + 1);
            assert_eq!(ranges.last().unwrap().gte, FLOOR);
            for pair in ranges.windows(2) {
                assert_eq!(pair[0].gte, pair[1].lt, "contiguous");
                assert!(pair[0].gte < pair[0].lt);
            }
        }
        // A day, two, four, ... back.
        let ranges = initial_ranges(1_800_000_000, 32);
        assert_eq!(ranges[0].gte, 1_800_000_001 - 86_400);
        assert_eq!(ranges[1].gte, 1_800_000_001 - 3 * 86_400);
    }

    #[test]
    fn cursors_round_trip() {
        let cursors = [
            Cursor::Backfill {
                starting_after: Some("ch_1".into()),
                anchor: Some("evt_1".into()),
                since: 1_700_000_000,
                pending_since: None,
                ranges: None,
            },
            Cursor::Backfill {
                starting_after: None,
                anchor: None,
                since: 1,
                pending_since: Some(0),
                ranges: None,
            },
            Cursor::Backfill {
                starting_after: None,
                anchor: Some("evt_1".into()),
                since: 1_700_000_000,
                pending_since: None,
                ranges: Some(vec![
                    Range {
                        gte: 1_650_000_000,
                        lt: 1_700_000_001,
                        starting_after: Some("ch_9".into()),
                        last_created: Some(1_690_000_000),
                    },
                    Range {
                        gte: FLOOR,
                        lt: 1_650_000_000,
                        starting_after: None,
                        last_created: None,
                    },
                ]),
            },
            Cursor::Changes {
                anchor: Some("evt_2".into()),
                anchor_created: 1_699_999_999,
                since: 1_700_000_000,
                pending_since: Some(1_699_000_000),
            },
            Cursor::Changes {
                anchor: None,
                anchor_created: 5,
                since: 5,
                pending_since: None,
            },
        ];
        for cursor in cursors {
            let json = encode(&cursor);
            assert_eq!(serde_json::to_value(&cursor).unwrap(), json);
            assert_eq!(decode::<Cursor>("s", Some(json)).unwrap(), Some(cursor));
        }
        assert_eq!(
            encode(&Cursor::Backfill {
                starting_after: Some("ch_1".into()),
                anchor: None,
                since: 7,
                pending_since: None,
                ranges: None,
            }),
            json!({"phase": "backfill", "starting_after": "ch_1", "anchor": null, "since": 7})
        );
        assert_eq!(decode::<Cursor>("s", Some(Value::Null)).unwrap(), None);
        let err = decode::<Cursor>("charges", Some(json!({"phase": "later"}))).unwrap_err();
        assert!(
            matches!(err, Error::Cursor { ref stream, .. } if stream == "charges"),
            "{err}"
        );
    }

    #[test]
    fn latest_changes_keep_the_newest_in_order_of_last_change() {
        let changes = [
            ("a", 1, false),
            ("b", 1, false),
            ("a", 2, false),
            ("c", 1, false),
            ("b", 2, true),
        ];
        let latest = latest_changes(changes.into_iter().map(|(id, v, d)| Change {
            id: id.to_owned(),
            object: json!({"id": id, "v": v}),
            deleted: d,
            current: true,
        }));
        let got: Vec<_> = latest
            .iter()
            .map(|c| (c.id.as_str(), c.object["v"].as_i64().unwrap(), c.deleted))
            .collect();
        assert_eq!(got, [("a", 2, false), ("c", 1, false), ("b", 2, true)]);
    }

    #[test]
    fn events_yield_their_objects_deletions_and_versions() {
        let event = json!({"id": "evt_1", "type": "customer.deleted", "api_version": "2024-06-20", "data": {"object": {"id": "cus_1", "deleted": true}}});
        let change = object_of_event(event, "2024-06-20").unwrap();
        assert_eq!(
            (change.id.as_str(), change.deleted, change.current),
            ("cus_1", true, true)
        );
        assert_eq!(change.object["deleted"], true);
        // A subscription's `.deleted` means it ended: it stays, `canceled`.
        let event = json!({"id": "evt_3", "type": "customer.subscription.deleted", "api_version": "2020-08-27", "data": {"object": {"id": "sub_1", "status": "canceled"}}});
        let change = object_of_event(event, "2024-06-20").unwrap();
        assert_eq!((change.deleted, change.current), (false, false));
        let event =
            json!({"id": "evt_2", "type": "customer.updated", "data": {"object": {"name": "x"}}});
        assert_eq!(object_of_event(event, "2024-06-20").unwrap_err(), "evt_2");
    }

    #[test]
    fn only_real_deletions_delete_and_every_type_is_stripes() {
        let known: Vec<&str> = include_str!("../fixtures/event_types.txt")
            .lines()
            .collect();
        for def in STREAMS {
            if let Feed::Events(types)
            | Feed::SubscriptionItems(types)
            | Feed::InvoiceItems(types) = def.feed
            {
                for t in types {
                    assert!(
                        known.contains(t),
                        "{}: Stripe has no event type {t}",
                        def.name
                    );
                }
            }
        }
        for t in DELETIONS {
            assert!(known.contains(t), "{t}");
        }
        assert!(deletes("invoiceitem.deleted") && deletes("customer.deleted"));
        assert!(!deletes("customer.subscription.deleted"));
        assert!(!known.contains(&"invoiceitem.updated"));
    }

    #[test]
    fn removed_subscription_items_come_from_previous_attributes() {
        let event = json!({
            "id": "evt_1", "type": "customer.subscription.updated", "api_version": "2024-06-20",
            "data": {
                "object": {"id": "sub_1", "items": {"object": "list", "has_more": false, "data": [{"id": "si_a"}]}},
                "previous_attributes": {"items": {"object": "list", "has_more": false, "data": [{"id": "si_a"}, {"id": "si_b", "quantity": 2}]}}
            }
        });
        let removed = removed_items(std::slice::from_ref(&event), "2024-06-20");
        assert_eq!(removed.len(), 1);
        assert_eq!(
            removed[0].item,
            json!({"id": "si_b", "quantity": 2, "subscription": "sub_1"})
        );
        assert!(removed[0].current && removed[0].certain);
        // An old list cut short still names items that are gone.
        let mut cut = event.clone();
        cut["data"]["previous_attributes"]["items"]["has_more"] = true.into();
        let removed = removed_items(&[cut], "2024-06-20");
        assert!(removed.len() == 1 && removed[0].certain);
        // A current list cut short cannot tell: the whole list is read.
        let mut cut = event.clone();
        cut["data"]["object"]["items"]["has_more"] = true.into();
        let removed = removed_items(&[cut], "2020-08-27");
        assert!(removed.len() == 1 && !removed[0].certain && !removed[0].current);
    }

    #[test]
    fn pending_marks_take_the_oldest() {
        let body = br#"{"data":[{"id":"txn_3","created":30,"status":"pending"},{"id":"txn_2","created":20,"status":"available"},{"id":"txn_1","created":10,"status":"pending"}],"has_more":false}"#;
        assert_eq!(oldest_pending(body), Some(10));
        assert_eq!(oldest_pending(br#"{"data":[],"has_more":false}"#), None);
        assert_eq!(older(Some(5), None), Some(5));
        assert_eq!(older(Some(5), Some(3)), Some(3));
        assert_eq!(older(None, None), None);
    }

    #[test]
    fn a_listing_knows_its_first_and_last_created() {
        let listing = |body: &str| {
            let (envelope, _) = tributary_sdk::pagination::scan_and_compact(
                body.as_bytes(),
                "data",
                "id",
                Some("created"),
            )
            .unwrap();
            crate::client::Listing {
                body: bytes::Bytes::new(),
                envelope,
                date: None,
            }
        };
        // A nested object's `created` is not the object's.
        let page = listing(
            r#"{"data":[{"id":"a","x":{"created":9,"y":[1]},"created":5},{"id":"b","created":3,"refunds":{"data":[{"created":8}]}}],"has_more":true}"#,
        );
        assert_eq!(
            (page.first_created(), page.last_created()),
            (Some(5), Some(3))
        );
        let empty = listing(r#"{"data":[],"has_more":false}"#);
        assert_eq!((empty.first_created(), empty.last_created()), (None, None));
        // Missing, null or not an integer: unknown, as a parse of the page would say.
        let odd = listing(
            r#"{"data":[{"id":"a","created":null},{"id":"b","created":"7"},{"id":"c"}],"has_more":false}"#,
        );
        assert_eq!((odd.first_created(), odd.last_created()), (None, None));
        let fraction = listing(r#"{"data":[{"id":"a","created":1.5}],"has_more":false}"#);
        assert_eq!(fraction.first_created(), None);
    }
}
