//! Host tests of the ring: eviction order, sinks, wrap-around, the C interface and the
//! no-drift property of the key rotation.

use super::*;
use std::collections::VecDeque;

/// xorshift64* generator, so every run gets the same chunk sizes and keys.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Returns a value in `low..=high`.
    fn range(&mut self, low: usize, high: usize) -> usize {
        low + (self.next() % (high - low + 1) as u64) as usize
    }
}

fn inv_freq(dim: usize, base: f64) -> Vec<f64> {
    (0..dim / 2)
        .map(|i| base.powf(-2.0 * i as f64 / dim as f64))
        .collect()
}

/// Creates a ring without rotation, for entries that carry their token id in every element.
fn plain_ring(layers: usize, sinks: usize, window: usize) -> KvRing {
    let config = RingConfig {
        layers,
        kv_heads: 2,
        head_dim: 3,
        sinks,
        window,
        rope_dim: 0,
        layout: RopeLayout::Adjacent,
    };
    KvRing::new(config, &[]).unwrap()
}

/// Evicts, stages and commits the tokens `first..first + count`; key = id, value = -id,
/// plus 0.5 times the layer so that layers differ.
fn push_ids(ring: &mut KvRing, first: usize, count: usize) -> usize {
    let evicted = ring.evict_for(count).unwrap();
    let RingConfig {
        layers,
        kv_heads,
        head_dim,
        ..
    } = *ring.config();
    for layer in 0..layers {
        let (keys, values) = ring.staging_mut();
        for head in 0..kv_heads {
            for k in 0..count {
                for d in 0..head_dim {
                    let id = (first + k) as f32 + 0.5 * layer as f32;
                    keys[(head * count + k) * head_dim + d] = id;
                    values[(head * count + k) * head_dim + d] = -id;
                }
            }
        }
        ring.append(layer, count).unwrap();
    }
    ring.commit(count).unwrap();
    evicted
}

/// Returns the token ids in the handoff keys of `layer`, checking that every head, every
/// element and the values agree.
fn past_ids(ring: &mut KvRing, layer: usize) -> Vec<usize> {
    ring.prepare_past().unwrap();
    let RingConfig {
        kv_heads, head_dim, ..
    } = *ring.config();
    let len = ring.len();
    let (keys, values) = ring.past(layer).unwrap();
    assert_eq!(keys.len(), kv_heads * len * head_dim);
    let offset = 0.5 * layer as f32;
    let ids: Vec<usize> = (0..len)
        .map(|i| (keys[i * head_dim] - offset) as usize)
        .collect();
    for head in 0..kv_heads {
        for (i, &id) in ids.iter().enumerate() {
            for d in 0..head_dim {
                let at = (head * len + i) * head_dim + d;
                assert_eq!(keys[at], id as f32 + offset);
                assert_eq!(values[at], -(id as f32 + offset));
            }
        }
    }
    ids
}

/// Returns the ids a sink + window cache contains after `total` tokens: ids `0..sinks`, then the
/// last `window` of the rest.
fn expected_ids(total: usize, sinks: usize, window: usize) -> Vec<usize> {
    let mut ids: Vec<usize> = (0..total.min(sinks)).collect();
    let rest_start = sinks.max(total.saturating_sub(window));
    ids.extend(rest_start..total);
    ids
}

#[test]
fn evict_for_drops_oldest_window_entries() {
    let mut ring = plain_ring(2, 2, 3);
    assert_eq!(push_ids(&mut ring, 0, 4), 0);
    assert_eq!(past_ids(&mut ring, 0), vec![0, 1, 2, 3]);
    assert_eq!(push_ids(&mut ring, 4, 1), 0);
    assert_eq!(push_ids(&mut ring, 5, 2), 2);
    assert_eq!(past_ids(&mut ring, 0), vec![0, 1, 4, 5, 6]);
    assert_eq!(past_ids(&mut ring, 1), vec![0, 1, 4, 5, 6]);
    assert_eq!(ring.total_evicted(), 2);
    assert_eq!(ring.total_committed(), 7);
}

#[test]
fn sinks_survive_many_wraps() {
    let (sinks, window) = (3, 5);
    let mut ring = plain_ring(1, sinks, window);
    let mut total = 0;
    let mut rng = Rng(7);
    while total < 5_000 {
        let count = rng.range(1, ring.max_incoming());
        push_ids(&mut ring, total, count);
        total += count;
        assert_eq!(past_ids(&mut ring, 0), expected_ids(total, sinks, window));
        assert_eq!(ring.sinks_filled(), sinks.min(total));
        assert_eq!(ring.total_evicted() as usize, total - ring.len());
    }
}

#[test]
fn zero_sinks_keep_only_window() {
    let mut ring = plain_ring(1, 0, 4);
    for count in [3, 4, 1, 2, 4] {
        let first = ring.total_committed() as usize;
        push_ids(&mut ring, first, count);
    }
    assert_eq!(past_ids(&mut ring, 0), vec![10, 11, 12, 13]);
    assert_eq!(ring.entered_at(0), Some(0));
    assert_eq!(ring.sinks_filled(), 0);
}

#[test]
fn window_of_one_keeps_newest() {
    let mut ring = plain_ring(1, 2, 1);
    push_ids(&mut ring, 0, 3);
    assert_eq!(past_ids(&mut ring, 0), vec![0, 1, 2]);
    for id in 3..20 {
        assert_eq!(push_ids(&mut ring, id, 1), 1);
        assert_eq!(past_ids(&mut ring, 0), vec![0, 1, id]);
    }
    assert!(matches!(ring.evict_for(2), Err(Status::ChunkTooLarge)));
}

#[test]
fn chunk_spanning_sinks_and_window_wraps() {
    let mut ring = plain_ring(1, 2, 4);
    push_ids(&mut ring, 0, 1);
    // Fills the last sink, then the whole window.
    push_ids(&mut ring, 1, 5);
    assert_eq!(past_ids(&mut ring, 0), vec![0, 1, 2, 3, 4, 5]);
    push_ids(&mut ring, 6, 3);
    assert_eq!(past_ids(&mut ring, 0), vec![0, 1, 5, 6, 7, 8]);
    // Starts mid-ring and wraps past the end.
    assert_eq!(push_ids(&mut ring, 9, 4), 4);
    assert_eq!(past_ids(&mut ring, 0), vec![0, 1, 9, 10, 11, 12]);
    let positions: Vec<Option<u32>> = (0..7).map(|i| ring.entered_at(i)).collect();
    assert_eq!(
        positions,
        vec![Some(0), Some(1), Some(2), Some(3), Some(4), Some(5), None]
    );
}

#[test]
fn max_incoming_counts_free_sinks() {
    let mut ring = plain_ring(1, 3, 2);
    assert_eq!(ring.max_incoming(), 5);
    assert!(matches!(ring.evict_for(6), Err(Status::ChunkTooLarge)));
    push_ids(&mut ring, 0, 1);
    assert_eq!(ring.max_incoming(), 4);
    assert!(matches!(ring.evict_for(5), Err(Status::ChunkTooLarge)));
    push_ids(&mut ring, 1, 4);
    assert_eq!(ring.max_incoming(), 2);
    assert_eq!(ring.len(), 5);
}

#[test]
fn append_and_commit_reject_misuse() {
    let mut ring = plain_ring(2, 1, 2);
    assert!(matches!(ring.append(2, 1), Err(Status::InvalidLayer)));
    assert!(matches!(ring.append(0, 4), Err(Status::NoRoom)));
    ring.append(0, 2).unwrap();
    assert!(matches!(ring.commit(2), Err(Status::NotStaged)));
    ring.append(1, 1).unwrap();
    assert!(matches!(ring.commit(2), Err(Status::NotStaged)));
    ring.append(1, 2).unwrap();
    ring.commit(2).unwrap();
    assert!(matches!(ring.commit(0), Err(Status::NotStaged)));
    assert!(matches!(ring.append(0, 2), Err(Status::NoRoom)));
    assert!(matches!(ring.restore(), Err(Status::NoSnapshot)));
}

#[test]
fn empty_chunk_is_a_no_op() {
    let mut ring = plain_ring(1, 1, 2);
    push_ids(&mut ring, 0, 2);
    assert_eq!(push_ids(&mut ring, 2, 0), 0);
    assert_eq!(past_ids(&mut ring, 0), vec![0, 1]);
}

#[test]
fn restore_returns_to_snapshot() {
    let mut ring = plain_ring(2, 2, 3);
    push_ids(&mut ring, 0, 4);
    ring.snapshot().unwrap();
    let before = past_ids(&mut ring, 1);
    push_ids(&mut ring, 4, 3);
    push_ids(&mut ring, 7, 2);
    assert_ne!(past_ids(&mut ring, 1), before);
    // A pending append is dropped too.
    ring.evict_for(1).unwrap();
    ring.append(0, 1).unwrap();
    ring.restore().unwrap();
    assert_eq!(past_ids(&mut ring, 1), before);
    assert_eq!(ring.total_committed(), 4);
    assert_eq!(ring.total_evicted(), 0);
    assert!(matches!(ring.commit(1), Err(Status::NotStaged)));
    // The snapshot stays, and the stream continues as if nothing happened.
    push_ids(&mut ring, 4, 3);
    ring.restore().unwrap();
    push_ids(&mut ring, 4, 3);
    assert_eq!(past_ids(&mut ring, 0), vec![0, 1, 4, 5, 6]);
}

#[test]
fn new_rejects_bad_sizes() {
    let good = RingConfig {
        layers: 1,
        kv_heads: 1,
        head_dim: 4,
        sinks: 1,
        window: 1,
        rope_dim: 4,
        layout: RopeLayout::Halves,
    };
    let freq = inv_freq(4, 10000.0);
    let cases = [
        (RingConfig { layers: 0, ..good }, Status::InvalidLayers),
        (
            RingConfig {
                kv_heads: 0,
                ..good
            },
            Status::InvalidKvHeads,
        ),
        (
            RingConfig {
                head_dim: 0,
                ..good
            },
            Status::InvalidHeadDim,
        ),
        (RingConfig { window: 0, ..good }, Status::InvalidWindow),
        (
            RingConfig {
                rope_dim: 3,
                ..good
            },
            Status::InvalidRopeDim,
        ),
        (
            RingConfig {
                rope_dim: 6,
                ..good
            },
            Status::InvalidRopeDim,
        ),
        (
            RingConfig {
                window: usize::MAX,
                ..good
            },
            Status::TooLarge,
        ),
        (
            RingConfig {
                head_dim: usize::MAX / 2,
                ..good
            },
            Status::TooLarge,
        ),
    ];
    for (config, status) in cases {
        assert_eq!(
            KvRing::new(config, &freq).unwrap_err(),
            status,
            "{config:?}"
        );
    }
    assert!(KvRing::new(good, &freq).is_ok());
}

#[test]
fn c_interface_reports_status_codes() {
    let freq = inv_freq(4, 10000.0);
    let mut handle = 0usize;
    // SAFETY: `freq` contains `4 / 2` f64 and `handle` is writable; the handle is freed below.
    unsafe {
        assert_eq!(
            kv_create(1, 1, 4, 1, 0, 4, 0, freq.as_ptr(), &mut handle),
            Status::InvalidWindow as i32
        );
        assert_eq!(
            kv_create(1, 1, 4, 1, 2, 4, 2, freq.as_ptr(), &mut handle),
            Status::InvalidLayout as i32
        );
        assert_eq!(
            kv_create(1, 1, 4, 1, 2, 4, 0, std::ptr::null(), &mut handle),
            Status::NullPointer as i32
        );
        assert_eq!(handle, 0);
        assert_eq!(
            kv_create(1, 1, 4, 1, 2, 4, 0, freq.as_ptr(), &mut handle),
            0
        );
        let ring = handle as *mut KvRing;
        assert_eq!(kv_evict_for(ring, 4), -(Status::ChunkTooLarge as i32));
        assert_eq!(
            kv_evict_for(std::ptr::null_mut(), 1),
            -(Status::NullPointer as i32)
        );
        assert_eq!(kv_evict_for(ring, 3), 0);
        assert_eq!(kv_append(ring, 0, 3), 0);
        assert_eq!(kv_commit(ring, 3), 0);
        assert_eq!(kv_query(ring, Query::Length as u32), 3.0);
        assert_eq!(kv_query(ring, Query::MaxIncoming as u32), 2.0);
        assert_eq!(kv_query(ring, 99), -1.0);
        assert_eq!(kv_entered_at(ring, 2), 2);
        assert_eq!(kv_entered_at(ring, 3), -1);
        assert!(kv_past_values(ring, 0).is_null());
        assert_eq!(kv_prepare_past(ring), 0);
        assert!(kv_past_keys(ring, 1).is_null());
        assert!(!kv_past_values(ring, 0).is_null());
        assert_eq!(kv_restore(ring), Status::NoSnapshot as i32);
        kv_free(ring);

        let buffer = kv_alloc(24);
        assert!(!buffer.is_null());
        assert_eq!(buffer as usize % 8, 0);
        kv_dealloc(buffer, 24);
        assert!(kv_alloc(0).is_null());
    }
}

/// Rotates `x` in f64 by `position` from the angles, independent of `RopeTable`.
fn rotate_f64(x: &[f64], position: f64, freq: &[f64], layout: RopeLayout) -> Vec<f64> {
    let dim = freq.len() * 2;
    let mut out = x.to_vec();
    for (i, f) in freq.iter().enumerate() {
        let (a, b) = match layout {
            RopeLayout::Adjacent => (2 * i, 2 * i + 1),
            RopeLayout::Halves => (i, i + dim / 2),
        };
        let (c, s) = ((position * f).cos(), (position * f).sin());
        out[a] = x[a] * c - x[b] * s;
        out[b] = x[a] * s + x[b] * c;
    }
    out
}

/// Returns the unrotated key of token `id` in `layer` and `head`: values in [-1, 1) from a
/// hash of the three indices.
fn raw_key(id: usize, layer: usize, head: usize, head_dim: usize) -> Vec<f64> {
    let mut rng = Rng(((id as u64) << 20 | (layer as u64) << 10 | head as u64) ^ 0x9e37_79b9);
    rng.next();
    (0..head_dim)
        .map(|_| (rng.next() >> 11) as f64 / (1u64 << 52) as f64 - 1.0)
        .collect()
}

/// Streams a million tokens and checks that every handed-out key equals its unrotated key
/// rotated once to its current position, computed in f64.
fn check_no_drift(layout: RopeLayout, seed: u64) {
    let config = RingConfig {
        layers: 2,
        kv_heads: 2,
        head_dim: 6,
        sinks: 3,
        window: 7,
        rope_dim: 4,
        layout,
    };
    // Base 10 makes the slowest pair turn fast enough to matter.
    let freq = inv_freq(config.rope_dim, 10.0);
    let mut ring = KvRing::new(config, &freq).unwrap();
    let head_dim = config.head_dim;
    let mut rng = Rng(seed);
    // Token ids in cache order.
    let mut cached: VecDeque<usize> = VecDeque::new();
    let mut total = 0usize;
    let mut worst = 0f64;
    let (mut step, mut checks) = (0usize, 0usize);
    while total < 1_000_000 {
        let count = rng.range(1, ring.max_incoming().min(4));
        ring.evict_for(count).unwrap();
        while cached.len() + count > ring.capacity() {
            cached.remove(config.sinks);
        }
        let length = ring.len();
        for layer in 0..config.layers {
            let (keys, values) = ring.staging_mut();
            for head in 0..config.kv_heads {
                for k in 0..count {
                    let raw = raw_key(total + k, layer, head, head_dim);
                    let emitted = rotate_f64(&raw, (length + k) as f64, &freq, layout);
                    let at = (head * count + k) * head_dim;
                    for d in 0..head_dim {
                        keys[at + d] = emitted[d] as f32;
                        values[at + d] = raw[d] as f32;
                    }
                }
            }
            ring.append(layer, count).unwrap();
        }
        ring.commit(count).unwrap();
        cached.extend(total..total + count);
        total += count;

        // Every 29th step keeps a debug build under a few seconds and still samples every
        // ring offset, because 29 and the window size 7 are coprime.
        step += 1;
        if step % 29 != 0 && total < 1_000_000 {
            continue;
        }
        checks += 1;
        ring.prepare_past().unwrap();
        for layer in 0..config.layers {
            let (keys, values) = ring.past(layer).unwrap();
            for head in 0..config.kv_heads {
                for (position, &id) in cached.iter().enumerate() {
                    let raw = raw_key(id, layer, head, head_dim);
                    let expected = rotate_f64(&raw, position as f64, &freq, layout);
                    let at = (head * cached.len() + position) * head_dim;
                    for d in 0..head_dim {
                        worst = worst.max((keys[at + d] as f64 - expected[d]).abs());
                        assert_eq!(values[at + d], raw[d] as f32);
                    }
                }
            }
        }
    }
    assert_eq!(ring.total_committed() as usize, total);
    assert!(checks > 5_000, "only {checks} steps were checked");
    // f32 storage and f32 cos/sin give errors near 1e-7 for |x| <= 1, and a million steps
    // do not add to them because each key is rotated once from its stored form.
    assert!(worst < 1e-6, "{layout:?}: max error {worst}");
}

#[test]
fn million_tokens_no_drift_adjacent() {
    check_no_drift(RopeLayout::Adjacent, 11);
}

#[test]
fn million_tokens_no_drift_halves() {
    check_no_drift(RopeLayout::Halves, 12);
}

#[test]
fn import_state_resumes_identically() {
    let mut original = plain_ring(2, 2, 5);
    push_ids(&mut original, 0, 4);
    push_ids(&mut original, 4, 5);
    let mut bytes = vec![0u8; original.state_bytes()];
    original.export_state(&mut bytes).unwrap();

    let mut resumed = plain_ring(2, 2, 5);
    resumed.import_state(&bytes).unwrap();
    assert_eq!(resumed.len(), original.len());
    assert_eq!(resumed.total_evicted(), original.total_evicted());
    assert_eq!(resumed.total_committed(), original.total_committed());

    // Both rings must evict and hand over the same entries from here on, across wrap-around.
    for step in 0..4 {
        let first = 9 + step * 3;
        push_ids(&mut original, first, 3);
        push_ids(&mut resumed, first, 3);
        for layer in 0..2 {
            assert_eq!(past_ids(&mut resumed, layer), past_ids(&mut original, layer));
        }
    }
}

#[test]
fn import_state_keeps_rotated_keys_exact() {
    let config = RingConfig {
        layers: 1,
        kv_heads: 1,
        head_dim: 4,
        sinks: 1,
        window: 3,
        rope_dim: 4,
        layout: RopeLayout::Adjacent,
    };
    let freq = inv_freq(4, 10000.0);
    let mut original = KvRing::new(config, &freq).unwrap();
    for token in 0..6 {
        original.evict_for(1).unwrap();
        let (keys, values) = original.staging_mut();
        for d in 0..4 {
            keys[d] = token as f32 + 0.25 * d as f32;
            values[d] = -(token as f32);
        }
        original.append(0, 1).unwrap();
        original.commit(1).unwrap();
    }
    let mut bytes = vec![0u8; original.state_bytes()];
    original.export_state(&mut bytes).unwrap();
    let mut resumed = KvRing::new(config, &freq).unwrap();
    resumed.import_state(&bytes).unwrap();

    original.prepare_past().unwrap();
    resumed.prepare_past().unwrap();
    let (keys, values) = original.past(0).unwrap();
    let (resumed_keys, resumed_values) = resumed.past(0).unwrap();
    assert_eq!(resumed_keys, keys);
    assert_eq!(resumed_values, values);
}

#[test]
fn import_state_rejects_other_sizes_and_damage() {
    let mut original = plain_ring(2, 2, 5);
    push_ids(&mut original, 0, 7);
    let mut bytes = vec![0u8; original.state_bytes()];
    original.export_state(&mut bytes).unwrap();

    let mut wrong_length = vec![0u8; bytes.len()];
    assert_eq!(original.export_state(&mut wrong_length[1..]), Err(Status::InvalidState));

    // Same byte count, other split between sinks and window.
    let mut other_sizes = plain_ring(2, 3, 4);
    assert_eq!(other_sizes.state_bytes(), bytes.len());
    assert_eq!(other_sizes.import_state(&bytes), Err(Status::InvalidState));

    let mut target = plain_ring(2, 2, 5);
    assert_eq!(target.import_state(&bytes[1..]), Err(Status::InvalidState));

    let mut bad_version = bytes.clone();
    bad_version[0] = 99;
    assert_eq!(target.import_state(&bad_version), Err(Status::InvalidState));

    // window_len (word 11) larger than the window.
    let mut bad_length = bytes.clone();
    bad_length[44..48].copy_from_slice(&6u32.to_le_bytes());
    assert_eq!(target.import_state(&bad_length), Err(Status::InvalidState));

    // The entered positions start after the 72 header bytes, the current positions and the
    // ring indices follow, 7 words each. An entry that claims to have entered at a position
    // beyond the limit, which is the capacity here:
    let mut bad_position = bytes.clone();
    bad_position[72..76].copy_from_slice(&7u32.to_le_bytes());
    assert_eq!(target.import_state(&bad_position), Err(Status::InvalidState));

    // The newest window entry (index 6, row 6) claiming a position other than its index.
    let mut bad_position = bytes.clone();
    bad_position[100 + 6 * 4..100 + 7 * 4].copy_from_slice(&5u32.to_le_bytes());
    assert_eq!(target.import_state(&bad_position), Err(Status::InvalidState));

    // Two window rows claiming the same ring index.
    let mut same_index = bytes.clone();
    let first = same_index[128 + 2 * 4..128 + 3 * 4].to_vec();
    same_index[128 + 3 * 4..128 + 4 * 4].copy_from_slice(&first);
    assert_eq!(target.import_state(&same_index), Err(Status::InvalidState));
    assert_eq!(target.len(), 0);
}

#[test]
fn c_interface_exports_and_imports_state() {
    let mut ring = plain_ring(1, 1, 2);
    push_ids(&mut ring, 0, 3);
    let bytes = ring.state_bytes();
    let mut buffer = vec![0u8; bytes];
    let handle: *mut KvRing = &mut ring;
    // SAFETY: `handle` points to a live ring and `buffer` has `bytes` writable bytes.
    unsafe {
        assert_eq!(kv_query(handle, Query::StateBytes as u32), bytes as f64);
        assert_eq!(kv_export_state(handle, buffer.as_mut_ptr(), bytes), Status::Ok as i32);
        assert_eq!(
            kv_export_state(handle, std::ptr::null_mut(), bytes),
            Status::NullPointer as i32
        );
    }
    let mut copy = plain_ring(1, 1, 2);
    let copy_handle: *mut KvRing = &mut copy;
    // SAFETY: `copy_handle` points to a live ring and `buffer` has `bytes` readable bytes.
    unsafe {
        assert_eq!(kv_import_state(copy_handle, buffer.as_ptr(), bytes), Status::Ok as i32);
        assert_eq!(
            kv_import_state(copy_handle, buffer.as_ptr(), bytes - 1),
            Status::InvalidState as i32
        );
    }
    assert_eq!(copy.len(), 3);
}

/// Streams a million tokens through the handoff path with a position limit a little above the
/// capacity, so the ring rebases every few tokens. Checks that each handed-out key equals its
/// unrotated key rotated once to `base` plus its index within the cache, computed in f64, that
/// the values come in the same rows, and that the cache-order buffers still match.
fn check_handoff_no_drift(layout: RopeLayout, seed: u64) {
    let config = RingConfig {
        layers: 2,
        kv_heads: 2,
        head_dim: 6,
        sinks: 3,
        window: 7,
        rope_dim: 4,
        layout,
    };
    let freq = inv_freq(config.rope_dim, 10.0);
    let capacity = config.sinks + config.window;
    let mut ring = KvRing::with_positions(config, &freq, capacity + 5).unwrap();
    let head_dim = config.head_dim;
    let mut rng = Rng(seed);
    let mut cached: VecDeque<usize> = VecDeque::new();
    let mut total = 0usize;
    let mut worst = 0f64;
    let (mut step, mut checks, mut rebases) = (0usize, 0usize, 0usize);
    while total < 1_000_000 {
        let count = rng.range(1, ring.max_incoming().min(4));
        ring.evict_for(count).unwrap();
        while cached.len() + count > ring.capacity() {
            cached.remove(config.sinks);
        }
        let first = ring.prepare_handoff(count).unwrap();
        let length = ring.len();
        assert_eq!(first, ring.base() + length);
        assert!(first + count <= ring.max_positions());
        if ring.base() == 0 && total >= capacity {
            rebases += 1;
        }

        step += 1;
        if step % 29 == 0 {
            checks += 1;
            for layer in 0..config.layers {
                let (keys, values) = ring.handoff(layer).unwrap();
                assert_eq!(keys.len(), config.kv_heads * length * head_dim);
                for head in 0..config.kv_heads {
                    let mut seen = vec![false; length];
                    for row in 0..length {
                        let at = (head * length + row) * head_dim;
                        let id = values[at] as usize;
                        let index = cached.iter().position(|&c| c == id).unwrap();
                        assert!(!seen[index]);
                        seen[index] = true;
                        let raw = raw_key(id, layer, head, head_dim);
                        let expected = rotate_f64(&raw, (ring.base() + index) as f64, &freq, layout);
                        for d in 0..head_dim {
                            worst = worst.max((keys[at + d] as f64 - expected[d]).abs());
                        }
                    }
                }
            }
            ring.prepare_past().unwrap();
            let (keys, values) = ring.past(0).unwrap();
            for (index, &id) in cached.iter().enumerate() {
                let expected = rotate_f64(&raw_key(id, 0, 0, head_dim), index as f64, &freq, layout);
                assert_eq!(values[index * head_dim] as usize, id);
                for d in 0..head_dim {
                    worst = worst.max((keys[index * head_dim + d] as f64 - expected[d]).abs());
                }
            }
        }

        for layer in 0..config.layers {
            let (keys, values) = ring.staging_mut();
            for head in 0..config.kv_heads {
                for k in 0..count {
                    let raw = raw_key(total + k, layer, head, head_dim);
                    let emitted = rotate_f64(&raw, (first + k) as f64, &freq, layout);
                    let at = (head * count + k) * head_dim;
                    for d in 0..head_dim {
                        keys[at + d] = emitted[d] as f32;
                        values[at + d] = (total + k) as f32;
                    }
                }
            }
            ring.append(layer, count).unwrap();
        }
        ring.commit(count).unwrap();
        cached.extend(total..total + count);
        total += count;
    }
    assert!(checks > 5_000, "only {checks} steps were checked");
    assert!(rebases > 10_000, "only {rebases} rebases");
    assert!(worst < 1e-6, "{layout:?}: max error {worst}");
}

#[test]
fn million_tokens_handoff_no_drift_adjacent() {
    check_handoff_no_drift(RopeLayout::Adjacent, 21);
}

#[test]
fn million_tokens_handoff_no_drift_halves() {
    check_handoff_no_drift(RopeLayout::Halves, 22);
}

#[test]
fn steady_decoding_keeps_the_layout() {
    let mut ring = plain_ring(2, 2, 5);
    push_ids(&mut ring, 0, 7);
    // A full cache and one token per step: the length before each step stays at 6.
    for id in 7..40 {
        ring.evict_for(1).unwrap();
        ring.prepare_handoff(1).unwrap();
        let pointer = ring.handoff_ptrs(1).unwrap().0;
        assert_eq!(ring.state_parts().stride, 6);
        push_ids(&mut ring, id, 1);
        assert_eq!(ring.handoff_ptrs(1).unwrap().0, pointer);
        assert_eq!(past_ids(&mut ring, 1), expected_ids(id + 1, 2, 5));
    }
}

#[test]
fn with_positions_rejects_a_limit_below_the_capacity() {
    let config = RingConfig {
        layers: 1,
        kv_heads: 1,
        head_dim: 2,
        sinks: 1,
        window: 3,
        rope_dim: 0,
        layout: RopeLayout::Adjacent,
    };
    let result = KvRing::with_positions(config, &[], 3);
    assert_eq!(result.err().map(|status| status as i32), Some(Status::InvalidPositions as i32));
}
