//! [`Document`]: the built-in JSON document stream type that `gundb node` serves.
//!
//! An event is a [`Patch`]: fields to set to JSON values, or to remove. The view is the
//! JSON object of the fields' latest values. Each field resolves on its own by canonical
//! order: the write that sorts last wins, whatever order the writes arrive in. The view
//! keeps, per field, the order key of the write that set (or removed) it, so applying a
//! late write that sorts earlier changes nothing: the stream is commutative and never
//! needs a rollback.
//!
//! Values are kept as JSON text, validated when a patch is made and again when one is
//! decoded (a peer could send any bytes), because the binary codec cannot carry
//! `serde_json::Value` itself.

use crate::event::{Event, EventMeta, OrderKey};
use crate::limits;
use crate::view::{Stream, View};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// `event` as a JSON object: its stream, type, id, site, seq, Lamport counter and time,
/// and its payload: `patch` for a document's event that decodes, `payload_hex` for any
/// other. What `GET /events` and `gundb inspect` show.
pub fn event_json(event: &Event) -> Value {
    let mut json = serde_json::json!({
        "stream": event.lane.stream.to_string(),
        "type": event.stream_type,
        "id": event.id.to_string(),
        "site": event.lane.site.to_string(),
        "seq": event.seq.0,
        "lamport": event.lamport,
        "timestamp_ms": event.timestamp_ms,
    });
    let patch = (event.stream_type == Document::TYPE_NAME)
        .then(|| crate::codec::decode::<Patch>(&event.payload).ok())
        .flatten();
    match patch {
        Some(patch) => json["patch"] = patch.to_json(),
        None => json["payload_hex"] = event.payload.iter().map(|byte| format!("{byte:02x}")).collect::<String>().into(),
    }
    json
}

/// The JSON document stream type.
///
/// # Examples
/// ```
/// use gundb::doc::{Document, Patch};
/// use gundb::{Emit, GetView, Site, StreamId};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// actix::System::new().block_on(async {
///     let site = Site::temporary()?;
///     let profile = site.stream::<Document>(StreamId::named("profile")).await?;
///     profile.send(Emit::new(Patch::from_json(r#"{"name": "Ada", "city": "London"}"#)?)).await??;
///     profile.send(Emit::new(Patch::from_json(r#"{"city": null}"#)?)).await??;
///     let view = profile.send(GetView::new()).await??.view;
///     assert_eq!(view.to_json(), serde_json::json!({"name": "Ada"}));
///     Ok(())
/// })
/// # }
/// ```
#[derive(Debug)]
pub struct Document;

impl Stream for Document {
    const TYPE_NAME: &'static str = "gundb.document";
    type Event = Patch;
    type View = Fields;
    const COMMUTATIVE: bool = true;
}

/// Why JSON is not a patch.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    /// Not JSON at all.
    #[error("not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// JSON, but not an object of fields.
    #[error("a patch is a JSON object of fields to set (or to remove, with null); got {0}")]
    NotAnObject(&'static str),
    /// An object without fields.
    #[error("a patch sets or removes at least one field; got an empty object")]
    Empty,
    /// Too many fields in one patch.
    #[error("a patch has at most {max} fields; got {got}")]
    TooManyFields {
        /// Fields in the patch.
        got: usize,
        /// The limit, [`limits::PATCH_FIELDS_MAX`].
        max: usize,
    },
}

/// One write to a document: each field is set to a JSON value (kept as its JSON text), or
/// removed (`None`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "BTreeMap<String, Option<String>>")]
pub struct Patch {
    fields: BTreeMap<String, Option<String>>,
}

impl Patch {
    /// The patch a JSON object describes: a field with a `null` value is removed, any
    /// other value is set (a JSON merge patch, one level deep).
    ///
    /// # Errors
    /// `json` is not a JSON object with 1 to [`limits::PATCH_FIELDS_MAX`] fields.
    pub fn from_json(json: &str) -> Result<Self, PatchError> {
        Self::from_value(serde_json::from_str(json)?)
    }

    /// [`Patch::from_json`] for JSON bytes, such as a request body.
    ///
    /// # Errors
    /// `json` is not a JSON object with 1 to [`limits::PATCH_FIELDS_MAX`] fields.
    pub fn from_slice(json: &[u8]) -> Result<Self, PatchError> {
        Self::from_value(serde_json::from_slice(json)?)
    }

    /// [`Patch::from_json`] for parsed JSON.
    ///
    /// # Errors
    /// `value` is not an object with 1 to [`limits::PATCH_FIELDS_MAX`] fields.
    pub fn from_value(value: Value) -> Result<Self, PatchError> {
        let Value::Object(object) = value else { return Err(PatchError::NotAnObject(kind(&value))) };
        let fields: BTreeMap<String, Option<String>> = object
            .into_iter()
            .map(|(field, value)| (field, if value.is_null() { None } else { Some(value.to_string()) }))
            .collect();
        Self::try_from(fields)
    }

    /// The fields this patch sets (with their JSON text) or removes (`None`).
    pub fn fields(&self) -> &BTreeMap<String, Option<String>> {
        &self.fields
    }

    /// The patch as a JSON object, removals as `null`.
    pub fn to_json(&self) -> Value {
        let fields = self.fields.iter().map(|(field, value)| (field.clone(), parsed(value.as_deref())));
        Value::Object(fields.collect())
    }
}

impl TryFrom<BTreeMap<String, Option<String>>> for Patch {
    type Error = PatchError;

    /// Checks a decoded patch: a peer can send any bytes, so every value must be JSON.
    fn try_from(fields: BTreeMap<String, Option<String>>) -> Result<Self, PatchError> {
        if fields.is_empty() {
            return Err(PatchError::Empty);
        }
        if fields.len() > limits::PATCH_FIELDS_MAX {
            return Err(PatchError::TooManyFields { got: fields.len(), max: limits::PATCH_FIELDS_MAX });
        }
        for text in fields.values().flatten() {
            // Parsed as a `Value`, as `Fields::to_json` will: some JSON (`1e400`) passes a
            // syntax check and still does not parse into one.
            serde_json::from_str::<Value>(text)?;
        }
        Ok(Self { fields })
    }
}

/// A document's view: per field, the write that sorts last in canonical order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fields {
    /// Per field, the order key of its latest write and its JSON text (`None`: removed; kept
    /// so that an earlier write arriving late cannot bring the field back).
    latest: BTreeMap<String, (OrderKey, Option<String>)>,
}

impl Fields {
    /// The document as a JSON object of its present fields.
    pub fn to_json(&self) -> Value {
        let present = self.latest.iter().filter_map(|(field, (_, value))| Some((field, value.as_deref()?)));
        Value::Object(present.map(|(field, text)| (field.clone(), parsed(Some(text)))).collect::<Map<_, _>>())
    }

    /// The JSON text of `field`, if present.
    pub fn get(&self, field: &str) -> Option<&str> {
        self.latest.get(field)?.1.as_deref()
    }
}

impl View<Patch> for Fields {
    fn apply_event(&mut self, patch: &Patch, meta: &EventMeta<'_>) {
        let key = OrderKey { lamport: meta.lamport, timestamp_ms: meta.timestamp_ms, id: meta.id };
        for (field, value) in &patch.fields {
            match self.latest.get_mut(field) {
                Some((latest, _)) if *latest >= key => {} // a later write already set it
                Some(entry) => *entry = (key, value.clone()),
                None => {
                    self.latest.insert(field.clone(), (key, value.clone()));
                }
            }
        }
    }
}

/// JSON text checked when its patch was made or decoded, parsed back.
fn parsed(text: Option<&str>) -> Value {
    // Every text here passed `Patch::try_from`'s check, so it parses; Null is unreachable
    // for set fields and is what a removal shows as.
    text.and_then(|text| serde_json::from_str(text).ok()).unwrap_or(Value::Null)
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{causal_shuffle, history, HistoryShape, Rng};
    use crate::{codec, order};
    use proptest::prelude::*;

    #[test]
    fn a_patch_is_an_object_of_one_or_more_fields() {
        assert!(matches!(Patch::from_json("[1]"), Err(PatchError::NotAnObject("an array"))));
        assert!(matches!(Patch::from_json("{}"), Err(PatchError::Empty)));
        assert!(matches!(Patch::from_json("{\"a\": "), Err(PatchError::Json(_))));
        let patch = Patch::from_json(r#"{"a": {"b": [1, 2]}, "c": null}"#).unwrap();
        assert_eq!(patch.fields()["a"].as_deref(), Some(r#"{"b":[1,2]}"#));
        assert_eq!(patch.fields()["c"], None);
        assert_eq!(patch.to_json(), serde_json::json!({"a": {"b": [1, 2]}, "c": null}));
    }

    #[test]
    fn a_decoded_patch_with_a_value_that_is_not_json_is_refused() {
        let fields: BTreeMap<String, Option<String>> = [("a".to_string(), Some("{nope".to_string()))].into();
        let bytes = codec::encode(&fields).unwrap();
        assert!(codec::decode::<Patch>(&bytes).is_err());
        let huge: BTreeMap<String, Option<String>> = [("a".to_string(), Some("1e400".to_string()))].into();
        assert!(codec::decode::<Patch>(&codec::encode(&huge).unwrap()).is_err(), "JSON that no Value holds");
        let good = Patch::from_json(r#"{"a": 1}"#).unwrap();
        assert_eq!(codec::decode::<Patch>(&codec::encode(&good).unwrap()).unwrap(), good);
    }

    fn fold_in(events: &[crate::Event]) -> Fields {
        let mut view = Fields::default();
        for event in events {
            view.apply_event(&codec::decode(&event.payload).unwrap(), &event.meta());
        }
        view
    }

    proptest! {
        /// The law that makes `COMMUTATIVE` true: any causal arrival order folds to the view
        /// of the canonical order.
        #[test]
        fn any_arrival_order_folds_to_the_canonical_view(seed in any::<u64>()) {
            let mut rng = Rng::new(seed);
            let shape = HistoryShape { sites: 3, streams: 1, events: 40, sync_percent: 30 };
            let mut events = history(shape, &mut rng);
            for event in &mut events {
                // Five fields, so writes collide; every fourth write removes its field.
                let n = rng.below(20);
                let value = if n % 4 == 0 { "null".to_string() } else { n.to_string() };
                let patch = Patch::from_json(&format!("{{\"f{}\": {value}}}", n % 5)).unwrap();
                event.payload = codec::encode(&patch).unwrap();
            }
            let canonical = order::sort_events(events.clone()).unwrap();
            let shuffled = causal_shuffle(&events, &mut rng);
            prop_assert_eq!(fold_in(&shuffled), fold_in(&canonical), "seed {}", seed);
        }
    }
}
