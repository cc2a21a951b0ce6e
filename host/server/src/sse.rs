//! SSE frames of operation events, encoded once for every watcher of an operation.
//!
//! An event seen by 10,000 watchers is encoded into one frame (`event:`, `id:` = revision,
//! `data:` = the snapshot's JSON) and that frame's bytes are shared by every connection, so
//! fan-out costs one copy of a pointer per watcher instead of one JSON encoding. The
//! list-watch stream's frames, whose `id:` is the change's cursor, are shared the same way.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};

use axum::body::Bytes;
use axum::http::{HeaderName, HeaderValue, header};
use opshost_api::OperationEvent;
use opshost_runtime::{Change, ChangeCursor};

/// Frames kept for watchers that are still catching up.
const CAPACITY: usize = 4096;

/// Recently encoded frames, by operation id and revision.
#[derive(Default)]
pub(crate) struct Frames {
    state: Mutex<Recent>,
}

/// Frames by id, then revision (so a lookup allocates nothing), and the order they came in.
#[derive(Default)]
struct Recent {
    frames: HashMap<String, BTreeMap<u64, Bytes>>,
    order: VecDeque<(String, u64)>,
    len: usize,
}

impl Frames {
    /// The frame of `event`, encoded now unless a watcher already did.
    pub(crate) fn frame(&self, event: &OperationEvent) -> Bytes {
        let snapshot = event.snapshot();
        let (id, revision) = (snapshot.id.as_str(), snapshot.revision);
        let cached = self
            .lock()
            .frames
            .get(id)
            .and_then(|by_revision| by_revision.get(&revision).cloned());
        if let Some(frame) = cached {
            return frame;
        }
        let frame = encode(event.kind().as_str(), revision, &json(snapshot));
        let mut recent = self.lock();
        let by_revision = recent.frames.entry(id.to_owned()).or_default();
        if by_revision.insert(revision, frame.clone()).is_none() {
            recent.len += 1;
            recent.order.push_back((id.to_owned(), revision));
        }
        while recent.len > CAPACITY {
            let Some((old, old_revision)) = recent.order.pop_front() else {
                break;
            };
            if let Some(by_revision) = recent.frames.get_mut(&old) {
                by_revision.remove(&old_revision);
                if by_revision.is_empty() {
                    recent.frames.remove(&old);
                }
            }
            recent.len -= 1;
        }
        frame
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// Frames of the list-watch stream kept for streams that are a little behind.
const RECENT_CHANGES: usize = 256;

/// The frames of the list-watch stream's recent changes (`id:` = the change's cursor), encoded
/// once for every stream that shows them, as [`Frames`] does for one operation's watchers.
#[derive(Default)]
pub(crate) struct ChangeFrames {
    recent: Mutex<VecDeque<(ChangeCursor, Bytes)>>,
}

impl ChangeFrames {
    /// The frame of `change`, encoded now unless a stream already did.
    pub(crate) fn frame(&self, change: &Change) -> Bytes {
        let lock = || self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        let cached = lock()
            .iter()
            .rev()
            .find(|(cursor, _)| *cursor == change.cursor)
            .map(|(_, frame)| frame.clone());
        if let Some(frame) = cached {
            return frame;
        }
        let event = &change.event;
        let frame = encode(
            event.kind().as_str(),
            change.cursor,
            &json(event.snapshot()),
        );
        let mut recent = lock();
        recent.push_back((change.cursor, frame.clone()));
        if recent.len() > RECENT_CHANGES {
            recent.pop_front();
        }
        frame
    }
}

/// One SSE frame. `data` is JSON, which holds no raw newline.
pub(crate) fn encode(event: &str, id: impl std::fmt::Display, data: &str) -> Bytes {
    Bytes::from(format!("event: {event}\nid: {id}\ndata: {data}\n\n"))
}

/// An `error` frame, which has no revision.
pub(crate) fn error(data: &str) -> Bytes {
    Bytes::from(format!("event: error\ndata: {data}\n\n"))
}

/// The headers of every event stream: not cached, and not held back by a proxy that buffers
/// responses (nginx reads `X-Accel-Buffering`).
pub(crate) fn stream_headers() -> [(HeaderName, HeaderValue); 3] {
    [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        ),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            HeaderName::from_static("x-accel-buffering"),
            HeaderValue::from_static("no"),
        ),
    ]
}

/// The frame of a keep-alive comment.
pub(crate) fn keep_alive() -> Bytes {
    Bytes::from_static(b":\n\n")
}

#[cfg(test)]
mod tests {
    use opshost_api::{EventKind, Snapshot};

    use super::*;

    fn event(revision: u64) -> OperationEvent {
        let mut snapshot =
            Snapshot::accepted("op-1".into(), "svc".into(), "Op".into(), "v1".into());
        snapshot.revision = revision;
        OperationEvent::new(EventKind::Progress, snapshot)
    }

    #[test]
    fn an_event_is_encoded_once_and_its_frame_shared() {
        let frames = Frames::default();
        let first = frames.frame(&event(2));
        let second = frames.frame(&event(2));
        assert_eq!(
            first.as_ptr(),
            second.as_ptr(),
            "the same bytes, not a copy"
        );
        let text = String::from_utf8(first.to_vec()).unwrap();
        assert!(
            text.starts_with("event: progress\nid: 2\ndata: {"),
            "{text}"
        );
        assert!(text.ends_with("}\n\n"), "{text}");
    }

    #[test]
    fn a_change_is_encoded_once_with_its_cursor_as_the_id() {
        let frames = ChangeFrames::default();
        let change = Change {
            cursor: ChangeCursor { epoch: 7, seq: 3 },
            tenant: "acme".into(),
            event: event(2),
        };
        let first = frames.frame(&change);
        assert_eq!(first.as_ptr(), frames.frame(&change).as_ptr());
        let text = String::from_utf8(first.to_vec()).unwrap();
        assert!(
            text.starts_with("event: progress\nid: 7.3\ndata: {"),
            "{text}"
        );
    }

    #[test]
    fn old_frames_are_forgotten_beyond_the_capacity() {
        let frames = Frames::default();
        let first = frames.frame(&event(1));
        for revision in 2..=(CAPACITY as u64 + 1) {
            frames.frame(&event(revision));
        }
        assert_ne!(frames.frame(&event(1)).as_ptr(), first.as_ptr());
        assert_eq!(frames.lock().len, CAPACITY);
        assert_eq!(frames.lock().order.len(), CAPACITY);
    }
}
