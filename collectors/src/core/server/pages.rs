//! The buffers of pages no longer served, handed to the next encoding.
//!
//! At 400 VMIs a page is about 3 MB. A new buffer that large is fresh memory from the
//! kernel, and writing the page faults every 4 KiB of it in: about a quarter of the
//! encoding's time, measured (`bench/launcher-scale.sh`). When a snapshot is replaced and
//! no response holds its page any more, the page's buffer waits here for the first
//! encoding of the same kind of page for the next snapshot.
//!
//! A buffer waits at most until the next publish: one not taken by then (nobody asked for
//! that format in a whole interval) goes back to the allocator, so a format scraped once
//! does not keep its page's memory for ever.

use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::Bytes;

use crate::core::format::negotiate::Format;

/// The kinds of page a snapshot caches, one per body: both OpenMetrics versions share one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageKind {
    Text,
    OpenMetrics,
    Json,
}

impl PageKind {
    pub const COUNT: usize = 3;
    pub const ALL: [Self; Self::COUNT] = [Self::Text, Self::OpenMetrics, Self::Json];

    pub fn of(format: Format) -> Self {
        match format {
            Format::Text => Self::Text,
            Format::OpenMetrics1 | Format::OpenMetrics0 => Self::OpenMetrics,
            Format::Json => Self::Json,
        }
    }

    /// Its place in a `[_; PageKind::COUNT]`.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One spare buffer per kind of page.
#[derive(Debug, Default)]
pub struct SparePages(Mutex<[Vec<u8>; PageKind::COUNT]>);

impl SparePages {
    /// An empty buffer for a page of `kind`: the last one given back, or a new one.
    pub fn take(&self, kind: PageKind) -> Vec<u8> {
        let mut buffer = std::mem::take(&mut self.slots()[kind.index()]);
        buffer.clear();
        buffer
    }

    /// Keeps the buffer of `page` (a page of `kind` no longer served) for the next page
    /// of its kind, unless a response still holds it.
    pub fn give_back(&self, kind: PageKind, page: Bytes) {
        let Ok(mut page) = page.try_into_mut() else {
            return;
        };
        // Cleared first: turning it into a Vec would otherwise move its bytes.
        page.clear();
        let buffer = Vec::from(page);
        let mut slots = self.slots();
        let slot = &mut slots[kind.index()];
        if buffer.capacity() > slot.capacity() {
            *slot = buffer;
        }
    }

    /// Lets go of every buffer not taken since the last call (see the module doc).
    pub fn expire(&self) {
        *self.slots() = Default::default();
    }

    fn slots(&self) -> MutexGuard<'_, [Vec<u8>; PageKind::COUNT]> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A page as the encoders leave it: room to spare past its end.
    fn page(len: usize) -> Bytes {
        let mut buffer = Vec::with_capacity(len + len / 4);
        buffer.resize(len, b'x');
        Bytes::from(buffer)
    }

    #[test]
    fn a_page_nobody_holds_becomes_the_next_pages_buffer() {
        let spare = SparePages::default();
        let old = page(1 << 20);
        let at = old.as_ptr();
        spare.give_back(PageKind::Text, old);
        let buffer = spare.take(PageKind::Text);
        assert!(buffer.is_empty());
        assert_eq!(buffer.as_ptr(), at, "the same memory, not a copy");
        assert!(buffer.capacity() >= 1 << 20);
        assert_eq!(spare.take(PageKind::Text).capacity(), 0, "taken once");
    }

    #[test]
    fn a_page_a_response_still_holds_is_left_alone() {
        let spare = SparePages::default();
        let old = page(4096);
        let in_flight = old.clone();
        spare.give_back(PageKind::OpenMetrics, old);
        assert_eq!(spare.take(PageKind::of(Format::OpenMetrics0)).capacity(), 0);
        assert_eq!(in_flight.len(), 4096);
    }

    #[test]
    fn each_kind_of_page_keeps_its_own_buffer_until_expired() {
        let spare = SparePages::default();
        spare.give_back(PageKind::Json, page(8192));
        assert_eq!(spare.take(PageKind::Text).capacity(), 0);
        spare.expire();
        assert_eq!(spare.take(PageKind::Json).capacity(), 0);
    }
}
