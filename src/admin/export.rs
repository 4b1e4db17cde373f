//! `GET /v1/usage/export?from=D&to=D&format=csv|json`: request counts per app, key and day,
//! for billing. Streamed: a background task walks the keys a page at a time, reads each key's
//! counts for the range, and sends the rows as they come, so the answer is never held whole in
//! memory. A store failure midway aborts the body (the client sees a cut-off transfer, never a
//! short file that looks complete).

use super::validate::{invalid, DAY_SECONDS};
use super::AdminBody;
use crate::error::AdminError;
use crate::model::{utc_date, utc_day_number, DayUsage, KeyRecord, PageRequest, UsageSubject};
use crate::store::{KeyStore, StoreError};
use bytes::Bytes;
use futures_util::StreamExt;
use http::{header, HeaderValue, Response, StatusCode};
use http_body::Frame;
use http_body_util::{Either, StreamBody};
use std::sync::Arc;
use tokio::sync::mpsc;

/// The longest range one export covers: a year and a day, like the usage reads.
const MAX_DAYS: u64 = 366;
/// Keys read per listing call while exporting.
const KEYS_PER_PAGE: usize = 500;
/// Chunks buffered between the exporting task and the connection.
const BUFFERED_CHUNKS: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Format {
    Csv,
    Json,
}

/// What to export, from the query string.
#[derive(Debug)]
pub(super) struct Export {
    dates: Vec<String>,
    format: Format,
}

fn day(field: &'static str, text: Option<&str>) -> Result<u64, AdminError> {
    text.and_then(utc_day_number)
        .ok_or_else(|| invalid(field, "must be a date, YYYY-MM-DD"))
}

impl Export {
    pub(super) fn parse(
        from: Option<&str>,
        to: Option<&str>,
        format: Option<&str>,
    ) -> Result<Export, AdminError> {
        let (first, last) = (day("from", from)?, day("to", to)?);
        if last < first {
            return Err(invalid("to", "must not be before from"));
        }
        if last - first >= MAX_DAYS {
            return Err(invalid("to", format!("at most {MAX_DAYS} days after from")));
        }
        let format = match format.unwrap_or("csv") {
            "csv" => Format::Csv,
            "json" => Format::Json,
            _ => return Err(invalid("format", "must be csv or json")),
        };
        let dates = (first..=last).map(|d| utc_date(d * DAY_SECONDS)).collect();
        Ok(Export { dates, format })
    }

    /// The streamed answer; the rows are produced by a task that stops if the client goes.
    pub(super) fn respond(self, store: Arc<dyn KeyStore>) -> Response<AdminBody> {
        let (tx, rx) = mpsc::channel(BUFFERED_CHUNKS);
        let content_type = match self.format {
            Format::Csv => "text/csv; charset=utf-8",
            Format::Json => "application/json",
        };
        tokio::spawn(async move {
            if let Err(e) = self.run(&*store, &tx).await {
                tracing::warn!(error = %e, "usage export cut off: the store failed");
                let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
            }
        });
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|chunk| (chunk.map(Frame::data), rx))
        })
        .boxed();
        let mut response = Response::new(Either::Right(StreamBody::new(stream)));
        *response.status_mut() = StatusCode::OK;
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        response
    }

    async fn run(&self, store: &dyn KeyStore, tx: &Sender) -> Result<(), StoreError> {
        let (open, close) = match self.format {
            Format::Csv => (
                "date,app_id,key_id,requests,input_tokens,output_tokens\n",
                "",
            ),
            Format::Json => ("[", "]\n"),
        };
        send(tx, open.to_owned()).await;
        let mut first = true;
        let mut cursor: Option<String> = None;
        loop {
            let page = PageRequest {
                cursor: cursor.as_deref(),
                limit: KEYS_PER_PAGE,
            };
            let keys = store.list_keys(None, page, &|_| true).await?;
            let mut chunk = String::new();
            for key in &keys.items {
                self.rows(store, key, &mut chunk, &mut first).await?;
            }
            if !chunk.is_empty() && !send(tx, chunk).await {
                return Ok(());
            }
            match keys.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        send(tx, close.to_owned()).await;
        Ok(())
    }

    /// Appends the key's non-zero days to `out`.
    async fn rows(
        &self,
        store: &dyn KeyStore,
        key: &KeyRecord,
        out: &mut String,
        first: &mut bool,
    ) -> Result<(), StoreError> {
        let counts = store
            .day_usage(UsageSubject::Key(&key.id), &self.dates)
            .await?;
        for (date, day) in self.dates.iter().zip(counts) {
            if day == DayUsage::default() {
                continue;
            }
            let DayUsage {
                requests,
                input_tokens,
                output_tokens,
            } = day;
            match self.format {
                Format::Csv => {
                    out.push_str(&format!(
                        "{date},{},{},{requests},{input_tokens},{output_tokens}\n",
                        key.app_id, key.id
                    ));
                }
                Format::Json => {
                    let row = serde_json::json!({
                        "date": date, "app_id": key.app_id, "key_id": key.id, "requests": requests,
                        "input_tokens": input_tokens, "output_tokens": output_tokens,
                    });
                    if !*first {
                        out.push(',');
                    }
                    out.push_str(&row.to_string());
                    *first = false;
                }
            }
        }
        Ok(())
    }
}

type Sender = mpsc::Sender<Result<Bytes, std::io::Error>>;

/// `false` once the client has gone (nobody reads the body any more).
async fn send(tx: &Sender, text: String) -> bool {
    tx.send(Ok(Bytes::from(text))).await.is_ok()
}
