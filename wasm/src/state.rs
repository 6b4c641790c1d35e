//! Export and import of a ring's whole cache state as bytes, so a stream can resume in another
//! process exactly where it stopped.
//!
//! The byte layout, all little-endian:
//!
//! | bytes | field |
//! | --- | --- |
//! | 14 × u32 | format version, layers, kv_heads, head_dim, sinks, window, rope_dim, layout, max_positions, sinks_filled, window_start, window_len, base, 0 |
//! | 2 × u64 | total_evicted, total_committed |
//! | capacity × u32 | position each row's entry entered with |
//! | capacity × u32 | position each row's entry sits at |
//! | capacity × u32 | index of each window row's entry in the ring of `window` that starts at `window_start` and runs from oldest to newest |
//! | storage × f32 | keys as the model emitted them, `(layer, kv_head, row, head_dim)` |
//! | storage × f32 | values, laid out like the keys |
//!
//! where `storage = layers * kv_heads * capacity * head_dim`. The cached entries fill rows
//! `0..sinks_filled + window_len`. The rotated keys are not saved: import rotates each emitted
//! key to its position again, which gives the same bits. The snapshot taken by `snapshot` and
//! the staging and cache-order buffers are not part of the state.

use crate::ring::{try_zeroed_u32, KvRing};
use crate::Status;

/// Version of the byte layout above. Version 1 kept keys in cache slots without `base`.
pub const STATE_FORMAT_VERSION: u32 = 2;

/// Number of u32 words in the header.
const HEADER_WORDS: usize = 14;

/// Bytes of the fixed header: the u32 words and two u64 counters.
const HEADER_BYTES: usize = HEADER_WORDS * 4 + 2 * 8;

impl KvRing {
    /// Returns the number of bytes `export_state` writes.
    pub fn state_bytes(&self) -> usize {
        let storage = self.storage_len();
        HEADER_BYTES + 3 * self.capacity() * 4 + 2 * storage * 4
    }

    /// Writes the cache state into `out`, which must be exactly `state_bytes()` long.
    pub fn export_state(&self, out: &mut [u8]) -> Result<(), Status> {
        if out.len() != self.state_bytes() {
            return Err(Status::InvalidState);
        }
        let config = *self.config();
        let (state, layout_code) = (self.state_parts(), config.layout.code());
        let words: [u32; HEADER_WORDS] = [
            STATE_FORMAT_VERSION,
            config.layers as u32,
            config.kv_heads as u32,
            config.head_dim as u32,
            config.sinks as u32,
            config.window as u32,
            config.rope_dim as u32,
            layout_code,
            self.max_positions() as u32,
            state.sinks_filled as u32,
            state.window_start as u32,
            state.window_len as u32,
            state.base as u32,
            0,
        ];
        let mut writer = ByteWriter { out, offset: 0 };
        for word in words {
            writer.put(&word.to_le_bytes());
        }
        writer.put(&state.total_evicted.to_le_bytes());
        writer.put(&state.total_committed.to_le_bytes());
        for word in state
            .entered_at
            .iter()
            .chain(&state.position)
            .chain(&state.ring_index)
        {
            writer.put(&word.to_le_bytes());
        }
        for element in &state.emitted_keys {
            writer.put(&element.to_le_bytes());
        }
        let head_dim = config.head_dim;
        for layer in 0..config.layers {
            for head in 0..config.kv_heads {
                for row in 0..self.capacity() {
                    let at = self.offset(layer, head, row);
                    for element in &state.values[at..at + head_dim] {
                        writer.put(&element.to_le_bytes());
                    }
                }
            }
        }
        Ok(())
    }

    /// Replaces the cache state with one written by `export_state` of a ring with the same
    /// sizes, RoPE settings and position limit, and drops pending appends. On any error the
    /// ring is unchanged.
    ///
    /// Fails with `Status::InvalidState` when the length, version or sizes differ, or when
    /// the counters, rows and positions are inconsistent.
    pub fn import_state(&mut self, input: &[u8]) -> Result<(), Status> {
        if input.len() != self.state_bytes() {
            return Err(Status::InvalidState);
        }
        let mut reader = ByteReader { input, offset: 0 };
        let mut words = [0u32; HEADER_WORDS];
        for word in words.iter_mut() {
            *word = reader.u32();
        }
        let config = *self.config();
        let expected = [
            STATE_FORMAT_VERSION,
            config.layers as u32,
            config.kv_heads as u32,
            config.head_dim as u32,
            config.sinks as u32,
            config.window as u32,
            config.rope_dim as u32,
            config.layout.code(),
            self.max_positions() as u32,
        ];
        if words[..9] != expected {
            return Err(Status::InvalidState);
        }
        let (sinks_filled, window_start, window_len, base) = (
            words[9] as usize,
            words[10] as usize,
            words[11] as usize,
            words[12] as usize,
        );
        let length = sinks_filled + window_len;
        let consistent = sinks_filled <= config.sinks
            && window_start < config.window
            && window_len <= config.window
            && (window_len == 0 || sinks_filled == config.sinks)
            && base + length <= self.max_positions();
        if !consistent {
            return Err(Status::InvalidState);
        }
        let total_evicted = reader.u64();
        let total_committed = reader.u64();

        let capacity = self.capacity();
        let entered_at = read_words(&mut reader, capacity)?;
        let position = read_words(&mut reader, capacity)?;
        let ring_index = read_words(&mut reader, capacity)?;
        // The window rows `sinks_filled..length` contain distinct live ring indices, and each
        // window entry sits at `base` plus its index within the cache. Every cached entry's
        // positions lie below the limit.
        let mut window_rows = try_zeroed_u32(config.window)?;
        let mut seen = vec![false; config.window];
        for row in sinks_filled..length {
            let index = ring_index[row] as usize;
            if index >= config.window || seen[index] {
                return Err(Status::InvalidState);
            }
            let age = (index + config.window - window_start) % config.window;
            if age >= window_len || position[row] as usize != base + sinks_filled + age {
                return Err(Status::InvalidState);
            }
            seen[index] = true;
            window_rows[index] = row as u32;
        }
        let limit = self.max_positions() as u32;
        if (0..length).any(|row| entered_at[row] >= limit || position[row] >= limit) {
            return Err(Status::InvalidState);
        }

        let head_dim = config.head_dim;
        {
            let state = self.state_parts_mut();
            for element in state.emitted_keys.iter_mut() {
                *element = reader.f32();
            }
            state.stride = 0;
        }
        // With stride 0 every row lies in the spill area, which is `(kv_head, capacity)` rows.
        for layer in 0..config.layers {
            for head in 0..config.kv_heads {
                for row in 0..capacity {
                    let at = self.offset(layer, head, row);
                    let values = &mut self.state_parts_mut().values;
                    for element in &mut values[at..at + head_dim] {
                        *element = reader.f32();
                    }
                }
            }
        }
        let state = self.state_parts_mut();
        state.entered_at.copy_from_slice(&entered_at);
        state.position.copy_from_slice(&position);
        state.window_rows.copy_from_slice(&window_rows);
        state.ring_index.copy_from_slice(&ring_index);
        state.sinks_filled = sinks_filled;
        state.window_start = window_start;
        state.window_len = window_len;
        state.base = base;
        state.total_evicted = total_evicted;
        state.total_committed = total_committed;
        self.clear_staged();
        self.rebuild_handoff()
    }
}

/// Reads `count` u32 words.
fn read_words(reader: &mut ByteReader, count: usize) -> Result<Vec<u32>, Status> {
    let mut words = try_zeroed_u32(count)?;
    for word in words.iter_mut() {
        *word = reader.u32();
    }
    Ok(words)
}

/// Sequential writer into a buffer whose length the caller has checked.
struct ByteWriter<'a> {
    out: &'a mut [u8],
    offset: usize,
}

impl ByteWriter<'_> {
    fn put(&mut self, bytes: &[u8]) {
        self.out[self.offset..self.offset + bytes.len()].copy_from_slice(bytes);
        self.offset += bytes.len();
    }
}

/// Sequential reader over a buffer whose length the caller has checked.
struct ByteReader<'a> {
    input: &'a [u8],
    offset: usize,
}

impl ByteReader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut bytes = [0u8; N];
        bytes.copy_from_slice(&self.input[self.offset..self.offset + N]);
        self.offset += N;
        bytes
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }

    fn f32(&mut self) -> f32 {
        f32::from_le_bytes(self.take())
    }
}
