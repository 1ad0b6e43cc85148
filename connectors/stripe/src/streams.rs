//! The Stripe streams ([`STREAMS`], one table of data) and how one stream is read.
//!
//! A read has two phases, and every page it emits carries a [`Cursor`] that is a valid
//! place to resume (the runtime commits a page's rows together with its cursor):
//!
//! - **Backfill.** Note the newest event of the stream's feed (the *anchor*) and Stripe's
//!   clock (*since*), then walk the list endpoint newest-first with `starting_after`. Pages
//!   are the response bodies, untouched. The last page switches the cursor to the changes
//!   phase.
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
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tributary_sdk::pagination::{PageSender, ProgressGuard, spawn_pages};
use tributary_sdk::{Error, Page, PageStream, Record, Records, Result, StreamSchema};

use crate::client::{Listing, StripeClient, VENDOR, is_missing};

/// How many pages a read fetches ahead of the runtime's conversion.
const FETCH_AHEAD: usize = 4;

/// How long Stripe keeps events.
const EVENT_RETENTION_SECS: i64 = 30 * 24 * 3600;

/// How close to the retention limit a cursor may get before it is treated as expired: the
/// time a sync may take to reach the anchor.
const RETENTION_MARGIN_SECS: i64 = 3600;

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
}

const SUBSCRIPTION_EVENTS: &[&str] = &[
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "customer.subscription.paused",
    "customer.subscription.resumed",
];

/// Every stream, in the order `discover` lists them.
pub static STREAMS: &[StreamDef] = &[
    StreamDef {
        name: "customers",
        schema: include_str!("../../../schemas/stripe/customers.json"),
        list_path: "/v1/customers",
        list_params: &[],
        feed: Feed::Events(&["customer.created", "customer.updated", "customer.deleted"]),
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
    },
    StreamDef {
        name: "invoices",
        schema: include_str!("../../../schemas/stripe/invoices.json"),
        list_path: "/v1/invoices",
        list_params: &[],
        feed: Feed::Events(&[
            "invoice.created",
            "invoice.updated",
            "invoice.paid",
            "invoice.payment_failed",
            "invoice.finalized",
            "invoice.voided",
            "invoice.marked_uncollectible",
            "invoice.deleted",
        ]),
    },
    StreamDef {
        name: "invoice_items",
        schema: include_str!("../../../schemas/stripe/invoice_items.json"),
        list_path: "/v1/invoiceitems",
        list_params: &[],
        feed: Feed::Events(&[
            "invoiceitem.created",
            "invoiceitem.updated",
            "invoiceitem.deleted",
        ]),
    },
    StreamDef {
        name: "subscriptions",
        schema: include_str!("../../../schemas/stripe/subscriptions.json"),
        list_path: "/v1/subscriptions",
        list_params: &[("status", "all")],
        feed: Feed::Events(SUBSCRIPTION_EVENTS),
    },
    StreamDef {
        name: "subscription_items",
        schema: include_str!("../../../schemas/stripe/subscription_items.json"),
        list_path: "/v1/subscriptions",
        list_params: &[("status", "all")],
        feed: Feed::SubscriptionItems(SUBSCRIPTION_EVENTS),
    },
    StreamDef {
        name: "products",
        schema: include_str!("../../../schemas/stripe/products.json"),
        list_path: "/v1/products",
        list_params: &[],
        feed: Feed::Events(&["product.created", "product.updated", "product.deleted"]),
    },
    StreamDef {
        name: "prices",
        schema: include_str!("../../../schemas/stripe/prices.json"),
        list_path: "/v1/prices",
        list_params: &[],
        feed: Feed::Events(&["price.created", "price.updated", "price.deleted"]),
    },
    StreamDef {
        name: "plans",
        schema: include_str!("../../../schemas/stripe/plans.json"),
        list_path: "/v1/plans",
        list_params: &[],
        feed: Feed::Events(&["plan.created", "plan.updated", "plan.deleted"]),
    },
    StreamDef {
        name: "coupons",
        schema: include_str!("../../../schemas/stripe/coupons.json"),
        list_path: "/v1/coupons",
        list_params: &[],
        feed: Feed::Events(&["coupon.created", "coupon.updated", "coupon.deleted"]),
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
        ]),
    },
    StreamDef {
        name: "refunds",
        schema: include_str!("../../../schemas/stripe/refunds.json"),
        list_path: "/v1/refunds",
        list_params: &[],
        feed: Feed::Events(&["refund.created", "refund.updated", "refund.failed"]),
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
        ]),
    },
    StreamDef {
        name: "balance_transactions",
        schema: include_str!("../../../schemas/stripe/balance_transactions.json"),
        list_path: "/v1/balance_transactions",
        list_params: &[],
        feed: Feed::ListOnly,
    },
    StreamDef {
        name: "events",
        schema: include_str!("../../../schemas/stripe/events.json"),
        list_path: "/v1/events",
        list_params: &[],
        feed: Feed::AllEvents,
    },
];

/// The stream called `name`.
pub fn stream(name: &str) -> Option<&'static StreamDef> {
    STREAMS.iter().find(|s| s.name == name)
}

/// The parsed schemas of every stream; fails if a schema file is invalid or names
/// another stream.
pub fn schemas() -> Result<Vec<StreamSchema>> {
    STREAMS
        .iter()
        .map(|def| {
            let schema = StreamSchema::from_json(def.schema).map_err(|e| match e {
                Error::Schema { message, .. } => Error::Schema {
                    stream: def.name.to_owned(),
                    message,
                },
                other => other,
            })?;
            if schema.name != def.name {
                return Err(Error::Schema {
                    stream: def.name.to_owned(),
                    message: format!("the schema file is named `{}`", schema.name),
                });
            }
            Ok(schema)
        })
        .collect()
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
    },
}

impl Cursor {
    /// Reads a committed cursor; `null` means none.
    pub fn from_json(stream: &str, value: Value) -> Result<Option<Cursor>> {
        if value.is_null() {
            return Ok(None);
        }
        serde_json::from_value(value)
            .map(Some)
            .map_err(|e| Error::Cursor {
                stream: stream.to_owned(),
                message: e.to_string(),
            })
    }

    /// The cursor as committed.
    pub fn to_json(&self) -> Value {
        match self {
            Cursor::Backfill {
                starting_after,
                anchor,
                since,
            } => serde_json::json!({
                "phase": "backfill",
                "starting_after": starting_after,
                "anchor": anchor,
                "since": since,
            }),
            Cursor::Changes {
                anchor,
                anchor_created,
                since,
            } => serde_json::json!({
                "phase": "changes",
                "anchor": anchor,
                "anchor_created": anchor_created,
                "since": since,
            }),
        }
    }
}

/// Reads stream `def` from `cursor` (or from scratch), fetching ahead of the consumer.
pub fn read(
    client: Arc<StripeClient>,
    def: &'static StreamDef,
    page_size: u32,
    cursor: Option<Cursor>,
    full_refresh: bool,
) -> PageStream {
    spawn_pages(FETCH_AHEAD, move |tx| {
        let reader = Reader {
            client,
            def,
            page_size,
            tx,
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
}

/// A changes phase in progress.
#[derive(Debug, Clone)]
struct ChangesAt {
    anchor: Option<String>,
    anchor_created: i64,
    since: i64,
}

impl ChangesAt {
    fn cursor(&self) -> Cursor {
        Cursor::Changes {
            anchor: self.anchor.clone(),
            anchor_created: self.anchor_created,
            since: self.since,
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
    Changes(ChangesAt),
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

/// Just the `created` of a listed object.
#[derive(Deserialize)]
struct Created {
    #[serde(default)]
    created: Option<i64>,
}

struct Reader {
    client: Arc<StripeClient>,
    def: &'static StreamDef,
    page_size: u32,
    tx: PageSender,
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
            }) => Step::Backfill(BackfillAt {
                starting_after,
                anchor,
                anchor_created: None,
                since,
            }),
            Some(Cursor::Changes {
                anchor,
                anchor_created,
                since,
            }) => Step::Changes(ChangesAt {
                anchor,
                anchor_created,
                since,
            }),
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
                Step::Changes(at) => self.changes(at, check_age).await?,
            };
            step = match outcome {
                Outcome::Done => return Ok(()),
                Outcome::Changes(at) => {
                    tracing::debug!(stream, "Backfill complete; following the changes.");
                    Step::Changes(at)
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
            .send(Page::new(records, cursor.to_json()).resetting(reset))
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
            },
            None => self.begin_backfill().await?,
        };
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
                at.anchor_created = first_created(&listing.body);
                at.since = unix(listing.date);
            }
            let has_more = listing.has_more();
            if has_more {
                let next = self.next_after(&mut guard, &listing)?;
                at.starting_after = Some(next);
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
                };
                if !self.emit(records, &next.cursor(), reset).await {
                    return Ok(Outcome::Done);
                }
                return Ok(Outcome::Changes(next));
            }
        }
    }

    /// Notes the newest event of the stream's feed and Stripe's clock.
    async fn begin_backfill(&self) -> Result<BackfillAt> {
        let (path, mut query) = self.feed_query();
        if let Some(limit) = query.iter_mut().find(|(k, _)| *k == "limit") {
            limit.1 = "1".to_owned();
        }
        let listing = self.list(path, &query).await?;
        let anchor = listing.envelope.first_id.clone();
        let anchor_created = first_created(&listing.body);
        Ok(BackfillAt {
            starting_after: None,
            anchor,
            anchor_created,
            since: unix(listing.date),
        })
    }

    /// Follows the feed forward from `at` until caught up.
    async fn changes(&self, mut at: ChangesAt, check_age: bool) -> Result<Outcome> {
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

    /// One list page of `path` for this stream.
    async fn list(&self, path: &str, query: &[(&str, String)]) -> Result<Listing> {
        self.client.list(self.def.name, path, query).await
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
        let now = date.unwrap_or_else(|| self.client.server_now()).timestamp();
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
            Feed::Events(_) => Ok(latest_versions(
                objects.into_iter().filter_map(|e| self.object_of(e)),
            )),
            Feed::SubscriptionItems(_) => {
                let subscriptions =
                    latest_versions(objects.into_iter().filter_map(|e| self.object_of(e)));
                let mut items = Vec::new();
                for subscription in subscriptions {
                    items.extend(
                        self.items_of(subscription.value, subscription.is_deleted)
                            .await?,
                    );
                }
                Ok(items)
            }
        }
    }

    /// The object of an event, its id, and whether the event deletes it.
    fn object_of(&self, event: Value) -> Option<(String, Value, bool)> {
        let found = object_of_event(event);
        if let Err(event_id) = &found {
            tracing::warn!(
                stream = self.def.name,
                event = %event_id,
                "Skipping an event whose data.object has no id."
            );
        }
        found.ok()
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
        const PATH: &str = "/v1/subscription_items";
        let mut items: Vec<Value> = Vec::new();
        let mut after: Option<String> = None;
        let mut guard = ProgressGuard::new(
            VENDOR,
            self.def.name,
            format!("`starting_after` of the items of subscription {id}"),
            "has_more stayed true",
        );
        loop {
            let mut query = vec![("subscription", id.to_owned()), ("limit", "100".to_owned())];
            if let Some(after) = &after {
                query.push(("starting_after", after.clone()));
            }
            let listing = self.list(PATH, &query).await?;
            if !listing.has_more() {
                items.extend(parse::<Value>(PATH, &listing.body)?.data);
                return Ok(items);
            }
            after = Some(self.next_after(&mut guard, &listing)?);
            items.extend(parse::<Value>(PATH, &listing.body)?.data);
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
            Feed::Events(types) | Feed::SubscriptionItems(types) => {
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
        let now = date.unwrap_or_else(|| self.client.server_now()).timestamp();
        created < now - EVENT_RETENTION_SECS + RETENTION_MARGIN_SECS
    }

    fn no_id(&self, path: &str) -> Error {
        Error::decode(
            format!("GET {path} response for stream `{}`", self.def.name),
            "an object has no `id` or `created`",
        )
    }
}

/// An event's `data.object`, its id, and whether the event type is a deletion; the event's
/// id as the error when the object has no id.
fn object_of_event(event: Value) -> Result<(String, Value, bool), String> {
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
        .is_some_and(|t| t.ends_with(".deleted"));
    let object = event
        .get_mut("data")
        .and_then(|data| data.get_mut("object"))
        .map(Value::take);
    let Some(object) = object else {
        return Err(event_id);
    };
    match object.get("id").and_then(Value::as_str).map(str::to_owned) {
        Some(id) => Ok((id, object, deleted)),
        None => Err(event_id),
    }
}

/// The newest version of each object, ordered by its last change. `changes` come oldest
/// first as (id, object, deleted).
fn latest_versions(changes: impl Iterator<Item = (String, Value, bool)>) -> Vec<Record> {
    let mut slots: Vec<Option<Record>> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for (id, value, is_deleted) in changes {
        if let Some(previous) = index.insert(id, slots.len()) {
            slots[previous] = None;
        }
        slots.push(Some(Record { value, is_deleted }));
    }
    slots.into_iter().flatten().collect()
}

/// An object's `id` and `created`.
fn id_and_created(object: &Value) -> Option<(String, i64)> {
    Some((
        object.get("id")?.as_str()?.to_owned(),
        object.get("created")?.as_i64()?,
    ))
}

/// The `created` of the first object of a list page.
fn first_created(body: &[u8]) -> Option<i64> {
    serde_json::from_slice::<List<Created>>(body)
        .ok()?
        .data
        .first()?
        .created
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
        assert!(stream("charges").is_some() && stream("nope").is_none());
    }

    #[test]
    fn cursors_round_trip() {
        let cursors = [
            Cursor::Backfill {
                starting_after: Some("ch_1".into()),
                anchor: Some("evt_1".into()),
                since: 1_700_000_000,
            },
            Cursor::Backfill {
                starting_after: None,
                anchor: None,
                since: 1,
            },
            Cursor::Changes {
                anchor: Some("evt_2".into()),
                anchor_created: 1_699_999_999,
                since: 1_700_000_000,
            },
            Cursor::Changes {
                anchor: None,
                anchor_created: 5,
                since: 5,
            },
        ];
        for cursor in cursors {
            let json = cursor.to_json();
            assert_eq!(serde_json::to_value(&cursor).unwrap(), json);
            assert_eq!(Cursor::from_json("s", json).unwrap(), Some(cursor));
        }
        assert_eq!(
            Cursor::Backfill {
                starting_after: Some("ch_1".into()),
                anchor: None,
                since: 7
            }
            .to_json(),
            json!({"phase": "backfill", "starting_after": "ch_1", "anchor": null, "since": 7})
        );
        assert_eq!(Cursor::from_json("s", Value::Null).unwrap(), None);
        let err = Cursor::from_json("charges", json!({"phase": "later"})).unwrap_err();
        assert!(
            matches!(err, Error::Cursor { ref stream, .. } if stream == "charges"),
            "{err}"
        );
    }

    #[test]
    fn latest_versions_keep_the_newest_in_order_of_last_change() {
        let changes = [
            ("a", 1, false),
            ("b", 1, false),
            ("a", 2, false),
            ("c", 1, false),
            ("b", 2, true),
        ];
        let records = latest_versions(
            changes
                .into_iter()
                .map(|(id, v, d)| (id.to_owned(), json!({"id": id, "v": v}), d)),
        );
        let got: Vec<_> = records
            .iter()
            .map(|r| {
                (
                    r.value["id"].as_str().unwrap(),
                    r.value["v"].as_i64().unwrap(),
                    r.is_deleted,
                )
            })
            .collect();
        assert_eq!(got, [("a", 2, false), ("c", 1, false), ("b", 2, true)]);
    }

    #[test]
    fn events_yield_their_objects_and_deletions() {
        let event = json!({"id": "evt_1", "type": "customer.deleted", "data": {"object": {"id": "cus_1", "deleted": true}}});
        let (id, object, deleted) = object_of_event(event).unwrap();
        assert_eq!((id.as_str(), deleted), ("cus_1", true));
        assert_eq!(object["deleted"], true);
        let event =
            json!({"id": "evt_2", "type": "customer.updated", "data": {"object": {"name": "x"}}});
        assert_eq!(object_of_event(event).unwrap_err(), "evt_2");
    }

    #[test]
    fn first_created_reads_the_first_object() {
        assert_eq!(
            first_created(br#"{"data":[{"id":"a","created":5,"x":{"y":[1]}},{"id":"b","created":3}],"has_more":true}"#),
            Some(5)
        );
        assert_eq!(first_created(br#"{"data":[],"has_more":false}"#), None);
    }
}
