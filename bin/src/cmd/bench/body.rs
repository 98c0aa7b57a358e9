//! Request bodies: small ones are held (two zero-copy chunks), large ones are generated while
//! hyper sends them.
//!
//! Every put body comes from one random buffer shared by all clients (`shared`, allocated once
//! per run, at most [`STREAM_THRESHOLD`] + [`BODY_SLACK`] bytes). A body of up to
//! [`STREAM_THRESHOLD`] bytes is a fresh random tag and a slice of `shared` (see
//! [`small_body`]). A larger body is a [`Generator`]: hyper polls it for one frame at a time, and
//! each frame of at most [`FRAME_LEN`] bytes is a 16-byte tag derived from the request's seed and
//! the frame's index, then a slice of `shared` at an offset derived from the same; so no body is
//! ever held whole, frames cost no copy, and no two frames of a run are alike (block-deduplicating
//! stores such as Garage see distinct 1 MiB blocks) while the content stays incompressible. Since
//! hyper buffers at most about 400 KiB of request body per connection before it writes, a client's
//! memory stays bounded whatever the object size.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use rand::Rng;

/// Bodies above this many bytes are generated while streamed rather than sliced from `shared`.
pub const STREAM_THRESHOLD: u64 = 8 << 20;
/// Largest frame of a streamed body (tag included), and of the slice a frame takes from `shared`.
pub const FRAME_LEN: usize = 1 << 20;
/// Bytes of random slack after the largest held size in the shared buffer: each put starts at a
/// random offset in it, so large objects differ block by block too (stores that deduplicate
/// blocks, such as Garage, must not get identical bodies). At least [`FRAME_LEN`], so a streamed
/// frame has offsets to choose from.
pub const BODY_SLACK: usize = 1 << 20;
/// Random bytes at the start of every held body and of every frame of a streamed body.
const TAG_LEN: usize = 16;

/// Length of the shared random buffer for objects of at most `max_size` bytes: the largest held
/// body plus [`BODY_SLACK`] (at most 9 MiB, whatever `max_size`).
pub fn shared_len(max_size: u64) -> usize {
    max_size.min(STREAM_THRESHOLD) as usize + BODY_SLACK
}

/// The body of one put of `len` bytes, drawing its randomness from `rng`: held when `len` is at
/// most [`STREAM_THRESHOLD`], else generated while streamed.
pub fn put_payload(shared: &Bytes, len: u64, rng: &mut impl Rng) -> Payload {
    if len <= STREAM_THRESHOLD {
        Payload::new(small_body(shared, len as usize, rng))
    } else {
        Payload::streamed(Generator::new(shared.clone(), len, rng.random()))
    }
}

/// The held body of one put of `len` bytes: a fresh random tag of up to 16 bytes, then a slice of
/// `shared` (which holds at least `len + BODY_SLACK` bytes) at a random offset. Only the tag is
/// allocated; the slice shares `shared`'s memory.
pub fn small_body(shared: &Bytes, len: usize, rng: &mut impl Rng) -> [Bytes; 2] {
    let tag_len = len.min(TAG_LEN);
    let tag: [u8; TAG_LEN] = rng.random();
    let rest = len - tag_len;
    let span = shared.len().saturating_sub(rest);
    let offset = if span == 0 { 0 } else { rng.random_range(0..span) };
    let end = (offset + rest).min(shared.len());
    [Bytes::copy_from_slice(&tag[..tag_len]), shared.slice(offset..end)]
}

/// SplitMix64's finaliser: a cheap, well-mixed 64-bit hash.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A streamed body of a fixed length, generated frame by frame from a shared random buffer and a
/// seed; the same buffer, length and seed always give the same bytes.
///
/// Frame `i` is up to [`FRAME_LEN`] bytes: a 16-byte tag (a hash of the seed and `i`), then a
/// slice of the buffer at an offset hashed from the same. Each frame comes out as two chunks,
/// the tag and the slice, neither copied from the buffer.
#[derive(Debug)]
pub struct Generator {
    /// The shared random buffer; at least [`FRAME_LEN`] bytes.
    pattern: Bytes,
    seed: u64,
    /// Index of the next frame.
    frame: u64,
    /// Bytes not yet produced.
    remaining: u64,
    /// The slice of the current frame, after its tag was produced.
    pending: Option<Bytes>,
}

impl Generator {
    /// A body of `len` bytes from `pattern` (at least [`FRAME_LEN`] bytes, else frames are
    /// capped at its length) and `seed`.
    pub fn new(pattern: Bytes, len: u64, seed: u64) -> Self {
        Self { pattern, seed, frame: 0, remaining: len, pending: None }
    }

    /// Bytes not yet produced.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// The next chunk (at most [`FRAME_LEN`] bytes), or `None` at the end.
    pub fn next_chunk(&mut self) -> Option<Bytes> {
        if let Some(slice) = self.pending.take() {
            self.remaining -= slice.len() as u64;
            return Some(slice);
        }
        if self.remaining == 0 {
            return None;
        }
        let frame_cap = FRAME_LEN.min(self.pattern.len().max(TAG_LEN)) as u64;
        let frame_len = self.remaining.min(frame_cap) as usize;
        let h1 = mix(self.seed ^ mix(self.frame));
        let h2 = mix(h1);
        self.frame += 1;
        let mut tag = [0u8; TAG_LEN];
        tag[..8].copy_from_slice(&h1.to_le_bytes());
        tag[8..].copy_from_slice(&h2.to_le_bytes());
        let tag_len = frame_len.min(TAG_LEN);
        let rest = (frame_len - tag_len).min(self.pattern.len());
        let span = (self.pattern.len() - rest) as u64 + 1;
        let offset = (mix(h2) % span) as usize;
        if rest > 0 {
            self.pending = Some(self.pattern.slice(offset..offset + rest));
        }
        self.remaining -= tag_len as u64;
        Some(Bytes::copy_from_slice(&tag[..tag_len]))
    }
}

/// A request body with an exact `Content-Length`: nothing, a held body of up to two chunks sent
/// back to back, or a [`Generator`].
#[derive(Debug, Default)]
pub struct Payload {
    /// Held chunks not yet sent, in order (`None` once sent or when empty).
    parts: [Option<Bytes>; 2],
    /// The generator of a streamed body.
    stream: Option<Generator>,
    /// Bytes not yet sent.
    remaining: u64,
    /// Counts the bytes handed to hyper as they go (the progress line).
    meter: Option<Arc<AtomicU64>>,
}

impl Payload {
    /// A held body made of `parts`, in order.
    pub fn new(parts: [Bytes; 2]) -> Self {
        let remaining = parts.iter().map(|p| p.len() as u64).sum();
        let [a, b] = parts;
        Self {
            parts: [Some(a).filter(|p| !p.is_empty()), Some(b).filter(|p| !p.is_empty())],
            stream: None,
            remaining,
            meter: None,
        }
    }

    /// A body generated while sent.
    pub fn streamed(generator: Generator) -> Self {
        Self {
            parts: [None, None],
            remaining: generator.remaining(),
            stream: Some(generator),
            meter: None,
        }
    }

    /// Adds the length of every chunk to `meter` as hyper takes it.
    pub fn metered(mut self, meter: Arc<AtomicU64>) -> Self {
        self.meter = Some(meter);
        self
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Total length in bytes (before sending).
    pub fn len(&self) -> u64 {
        self.remaining
    }
}

impl Body for Payload {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let next = match this.parts.iter_mut().find_map(Option::take) {
            Some(chunk) => Some(chunk),
            None => this.stream.as_mut().and_then(Generator::next_chunk),
        };
        if let Some(chunk) = &next {
            this.remaining -= chunk.len() as u64;
            if let Some(m) = &this.meter {
                m.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        }
        Poll::Ready(next.map(|c| Ok(Frame::data(c))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngCore, SeedableRng};

    fn drain(mut p: Payload) -> Vec<Bytes> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut chunks = Vec::new();
        while let Poll::Ready(Some(Ok(f))) = Pin::new(&mut p).poll_frame(&mut cx) {
            chunks.push(f.into_data().unwrap());
            assert_eq!(p.size_hint().exact(), Some(p.len()));
        }
        assert!(p.is_end_stream() && p.len() == 0);
        chunks
    }

    fn pattern(len: usize) -> Bytes {
        let mut buf = vec![0u8; len];
        rand::rngs::StdRng::seed_from_u64(3).fill_bytes(&mut buf);
        Bytes::from(buf)
    }

    #[test]
    fn payload_sends_its_parts_in_order_with_an_exact_length() {
        let p = Payload::new([Bytes::from_static(b"ab"), Bytes::from_static(b"cde")]);
        assert_eq!(p.size_hint().exact(), Some(5));
        assert_eq!(drain(p).concat(), b"abcde");
        let e = Payload::empty();
        assert!(e.is_end_stream() && e.size_hint().exact() == Some(0));
    }

    #[test]
    fn streamed_bodies_have_the_exact_length_bounded_frames_and_depend_only_on_the_seed() {
        let shared = pattern(shared_len(1 << 30));
        for len in
            [0u64, 1, 15, 16, 17, FRAME_LEN as u64, FRAME_LEN as u64 + 1, 5 * 1024 * 1024 + 7]
        {
            let p = Payload::streamed(Generator::new(shared.clone(), len, 42));
            assert_eq!(p.size_hint().exact(), Some(len));
            let chunks = drain(p);
            assert!(chunks.iter().all(|c| !c.is_empty() && c.len() <= FRAME_LEN), "len {len}");
            assert_eq!(chunks.iter().map(|c| c.len() as u64).sum::<u64>(), len);
            // Tag + slice per frame: about two chunks per FRAME_LEN, never a flood of small ones.
            assert!(chunks.len() as u64 <= 2 * len.div_ceil(FRAME_LEN as u64), "len {len}");
            let again = drain(Payload::streamed(Generator::new(shared.clone(), len, 42)));
            assert_eq!(chunks.concat(), again.concat(), "seed 42, len {len}: not deterministic");
            if len >= 8 {
                let other = drain(Payload::streamed(Generator::new(shared.clone(), len, 43)));
                assert_ne!(chunks.concat(), other.concat(), "seeds 42 and 43 give one body");
            }
        }
        // Frames of one body differ from each other; and slices are not copies of the buffer.
        let chunks = drain(Payload::streamed(Generator::new(shared.clone(), 8 << 20, 7)));
        let frames: Vec<Bytes> = chunks.chunks(2).map(<[Bytes]>::concat).map(Bytes::from).collect();
        assert_eq!(frames.len(), 8);
        assert!(frames.iter().all(|f| f.len() == FRAME_LEN));
        for (i, a) in frames.iter().enumerate() {
            assert!(frames[i + 1..].iter().all(|b| a != b), "frame {i} repeats");
        }
        let base = shared.as_ptr() as usize;
        let slice = &chunks[1];
        let p = slice.as_ptr() as usize;
        assert!(p >= base && p + slice.len() <= base + shared.len());
    }

    #[test]
    fn a_meter_counts_what_was_sent() {
        let meter = Arc::new(AtomicU64::new(5));
        let p =
            Payload::streamed(Generator::new(pattern(4 << 20), 3 << 20, 9)).metered(meter.clone());
        drain(p);
        assert_eq!(meter.load(Ordering::Relaxed), 5 + (3 << 20));
    }

    #[test]
    fn small_pattern_buffers_still_give_exact_lengths() {
        // A buffer shorter than a frame caps frames at its length.
        let shared = pattern(100);
        let chunks = drain(Payload::streamed(Generator::new(shared, 1000, 1)));
        assert_eq!(chunks.iter().map(Bytes::len).sum::<usize>(), 1000);
        assert!(chunks.iter().all(|c| c.len() <= 100));
    }

    #[test]
    fn put_payload_holds_small_bodies_and_streams_large_ones() {
        let shared = pattern(shared_len(1 << 30));
        assert_eq!(shared.len(), (8 << 20) + BODY_SLACK);
        assert_eq!(shared_len(4096), 4096 + BODY_SLACK);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let held = put_payload(&shared, STREAM_THRESHOLD, &mut rng);
        assert!(held.stream.is_none() && held.len() == STREAM_THRESHOLD);
        let streamed = put_payload(&shared, 3 << 30, &mut rng);
        assert!(streamed.stream.is_some());
        assert_eq!(streamed.size_hint().exact(), Some(3 << 30));
    }

    #[test]
    fn held_bodies_have_the_size_and_differ() {
        let shared = Bytes::from(vec![7u8; 4096 + BODY_SLACK]);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for len in [0, 1, 16, 17, 4096] {
            let [a0, a1] = small_body(&shared, len, &mut rng);
            let [b0, b1] = small_body(&shared, len, &mut rng);
            assert_eq!(a0.len() + a1.len(), len);
            assert_eq!(b0.len() + b1.len(), len);
            if len >= 8 {
                assert_ne!(a0, b0, "two bodies of {len} bytes start alike");
            }
            // The tail shares the buffer's memory (no copy).
            if !a1.is_empty() {
                let base = shared.as_ptr() as usize;
                let p = a1.as_ptr() as usize;
                assert!(p >= base && p + a1.len() <= base + shared.len());
            }
        }
    }
}
