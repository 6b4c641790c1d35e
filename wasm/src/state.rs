//! Export and import of a ring's whole cache state as bytes, so a stream can resume in another
//! process exactly where it stopped.
//!
//! The byte layout, all little-endian:
//!
//! | bytes | field |
//! | --- | --- |
//! | 12 × u32 | format version, layers, kv_heads, head_dim, sinks, window, rope_dim, layout, sinks_filled, window_start, window_len, 0 |
//! | 2 × u64 | total_evicted, total_committed |
//! | capacity × u32 | `entered_at` of every slot |
//! | storage × f32 | keys, `(layer, kv_head, slot, head_dim)` |
//! | storage × f32 | values, laid out like the keys |
//!
//! where `storage = layers * kv_heads * capacity * head_dim`. The snapshot taken by
//! `snapshot` and the staging and handoff buffers are not part of the state.

use crate::ring::KvRing;
use crate::Status;

/// Version of the byte layout above.
pub const STATE_FORMAT_VERSION: u32 = 1;

/// Bytes of the fixed header: twelve u32 words and two u64 counters.
const HEADER_BYTES: usize = 12 * 4 + 2 * 8;

impl KvRing {
    /// Returns the number of bytes `export_state` writes.
    pub fn state_bytes(&self) -> usize {
        let storage = self.storage_len();
        HEADER_BYTES + self.capacity() * 4 + 2 * storage * 4
    }

    /// Writes the cache state into `out`, which must be exactly `state_bytes()` long.
    pub fn export_state(&self, out: &mut [u8]) -> Result<(), Status> {
        if out.len() != self.state_bytes() {
            return Err(Status::InvalidState);
        }
        let config = self.config();
        let (state, layout_code) = (self.state_parts(), config.layout.code());
        let words = [
            STATE_FORMAT_VERSION,
            config.layers as u32,
            config.kv_heads as u32,
            config.head_dim as u32,
            config.sinks as u32,
            config.window as u32,
            config.rope_dim as u32,
            layout_code,
            state.sinks_filled as u32,
            state.window_start as u32,
            state.window_len as u32,
            0,
        ];
        let mut writer = ByteWriter { out, offset: 0 };
        for word in words {
            writer.put(&word.to_le_bytes());
        }
        writer.put(&state.total_evicted.to_le_bytes());
        writer.put(&state.total_committed.to_le_bytes());
        for position in &state.entered_at {
            writer.put(&position.to_le_bytes());
        }
        for element in state.keys.iter().chain(state.values.iter()) {
            writer.put(&element.to_le_bytes());
        }
        Ok(())
    }

    /// Replaces the cache state with one written by `export_state` of a ring with the same
    /// sizes and RoPE settings, and drops pending appends. On any error the ring is unchanged.
    ///
    /// Fails with `Status::InvalidState` when the length, version or sizes differ, or when
    /// the counters and positions are inconsistent.
    pub fn import_state(&mut self, input: &[u8]) -> Result<(), Status> {
        if input.len() != self.state_bytes() {
            return Err(Status::InvalidState);
        }
        let mut reader = ByteReader { input, offset: 0 };
        let mut words = [0u32; 12];
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
        ];
        if words[..8] != expected {
            return Err(Status::InvalidState);
        }
        let (sinks_filled, window_start, window_len) =
            (words[8] as usize, words[9] as usize, words[10] as usize);
        let consistent = sinks_filled <= config.sinks
            && window_start < config.window
            && window_len <= config.window
            && (window_len == 0 || sinks_filled == config.sinks);
        if !consistent {
            return Err(Status::InvalidState);
        }
        let total_evicted = reader.u64();
        let total_committed = reader.u64();

        let capacity = self.capacity();
        let mut entered_at = Vec::new();
        entered_at
            .try_reserve_exact(capacity)
            .map_err(|_| Status::OutOfMemory)?;
        for _ in 0..capacity {
            entered_at.push(reader.u32());
        }
        // A cached entry only moves towards position 0 after it enters, so the position it
        // entered with lies in `index..capacity`, which keeps the rotation inside the RoPE table.
        for index in 0..sinks_filled + window_len {
            let slot = if index < sinks_filled {
                index
            } else {
                config.sinks + (window_start + index - sinks_filled) % config.window
            };
            let entered = entered_at[slot] as usize;
            if entered < index || entered >= capacity {
                return Err(Status::InvalidState);
            }
        }

        let state = self.state_parts_mut();
        state.entered_at.copy_from_slice(&entered_at);
        for element in state.keys.iter_mut().chain(state.values.iter_mut()) {
            *element = reader.f32();
        }
        state.sinks_filled = sinks_filled;
        state.window_start = window_start;
        state.window_len = window_len;
        state.total_evicted = total_evicted;
        state.total_committed = total_committed;
        self.clear_staged();
        Ok(())
    }
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
