//! The sink + window KV ring of every layer, with its staging and handoff buffers.
//!
//! Slot `s < sinks` keeps the `s`-th token of the stream for good. Slots `sinks..capacity` form
//! a circular window of the most recent tokens. The i-th cached token (sinks first, then the
//! window from oldest to newest) is at position i. Keys are stored as the model emitted them,
//! rotated at the position `p0` they entered with, and `prepare_past` rotates each one by
//! `i - p0` straight from that stored key, so rounding never builds up over a long stream.

use crate::rope::{copy_f32, try_zeroed, RopeLayout, RopeTable, SIMD_AVAILABLE};
use crate::Status;

/// Sizes of a ring, as passed to `KvRing::new`.
#[derive(Clone, Copy, Debug)]
pub struct RingConfig {
    /// Number of transformer layers.
    pub layers: usize,
    /// Number of key/value heads per layer.
    pub kv_heads: usize,
    /// Elements per head.
    pub head_dim: usize,
    /// Number of sink slots (may be 0).
    pub sinks: usize,
    /// Number of window slots (at least 1).
    pub window: usize,
    /// Number of leading dims of each head that RoPE rotates (even, at most `head_dim`).
    pub rope_dim: usize,
    /// Pairing of the rotated dims.
    pub layout: RopeLayout,
}

/// The part of a ring that `snapshot` saves and `restore` brings back.
#[derive(Clone, Debug)]
pub(crate) struct RingState {
    /// Keys as emitted by the model, `(layer, kv_head, slot, head_dim)` f32.
    pub(crate) keys: Vec<f32>,
    /// Values, `(layer, kv_head, slot, head_dim)` f32.
    pub(crate) values: Vec<f32>,
    /// Position `p0` each slot's entry entered the cache with, `(slot)`.
    pub(crate) entered_at: Vec<u32>,
    /// Number of sink slots in use; the window stays empty until this equals `sinks`.
    pub(crate) sinks_filled: usize,
    /// Ring index (`0..window`) of the oldest window entry.
    pub(crate) window_start: usize,
    /// Number of window entries, `0..=window`.
    pub(crate) window_len: usize,
    /// Number of entries evicted since creation.
    pub(crate) total_evicted: u64,
    /// Number of entries committed since creation.
    pub(crate) total_committed: u64,
}

/// Marker in `KvRing::staged` for a layer with no pending append.
const NOT_STAGED: usize = usize::MAX;

/// The KV cache of every layer of one stream.
#[derive(Debug)]
pub struct KvRing {
    config: RingConfig,
    capacity: usize,
    /// f32 elements of one head of one layer across all slots: `capacity * head_dim`.
    head_block: usize,
    rope: RopeTable,
    simd: bool,
    state: RingState,
    /// Saved state, allocated by the first `snapshot`.
    saved: Option<RingState>,
    /// Count appended to each layer since the last commit, or `NOT_STAGED`.
    staged: Vec<usize>,
    /// New keys of one layer, `(kv_head, count, head_dim)` f32 with room for `capacity` tokens.
    staging_keys: Vec<f32>,
    /// New values of one layer, laid out like `staging_keys`.
    staging_values: Vec<f32>,
    /// Keys rotated to current positions, per layer a block of `kv_heads * capacity * head_dim`
    /// whose first `kv_heads * length * head_dim` elements are `(kv_head, length, head_dim)`.
    past_keys: Vec<f32>,
    /// Values, laid out like `past_keys`.
    past_values: Vec<f32>,
}

impl KvRing {
    /// Allocates every buffer of a ring and the RoPE table for deltas up to `capacity - 1`.
    pub fn new(config: RingConfig, inv_freq: &[f64]) -> Result<Self, Status> {
        if config.layers == 0 {
            return Err(Status::InvalidLayers);
        }
        if config.kv_heads == 0 {
            return Err(Status::InvalidKvHeads);
        }
        if config.head_dim == 0 {
            return Err(Status::InvalidHeadDim);
        }
        if config.window == 0 {
            return Err(Status::InvalidWindow);
        }
        if config.rope_dim % 2 != 0 || config.rope_dim > config.head_dim {
            return Err(Status::InvalidRopeDim);
        }
        let capacity = config
            .sinks
            .checked_add(config.window)
            .filter(|&c| c <= i32::MAX as usize)
            .ok_or(Status::TooLarge)?;
        let head_block = capacity
            .checked_mul(config.head_dim)
            .ok_or(Status::TooLarge)?;
        let storage_len = head_block
            .checked_mul(config.kv_heads)
            .and_then(|n| n.checked_mul(config.layers))
            .filter(|n| n.checked_mul(std::mem::size_of::<f32>()).is_some())
            .ok_or(Status::TooLarge)?;
        let staging_len = head_block * config.kv_heads;

        let rope = RopeTable::new(config.rope_dim, config.layout, inv_freq, capacity - 1)?;
        let mut entered_at = Vec::new();
        entered_at
            .try_reserve_exact(capacity)
            .map_err(|_| Status::OutOfMemory)?;
        entered_at.resize(capacity, 0);
        let state = RingState {
            keys: try_zeroed(storage_len)?,
            values: try_zeroed(storage_len)?,
            entered_at,
            sinks_filled: 0,
            window_start: 0,
            window_len: 0,
            total_evicted: 0,
            total_committed: 0,
        };
        Ok(KvRing {
            config,
            capacity,
            head_block,
            rope,
            simd: SIMD_AVAILABLE,
            state,
            saved: None,
            staged: vec![NOT_STAGED; config.layers],
            staging_keys: try_zeroed(staging_len)?,
            staging_values: try_zeroed(staging_len)?,
            past_keys: try_zeroed(storage_len)?,
            past_values: try_zeroed(storage_len)?,
        })
    }

    /// Sizes the ring was created with.
    pub fn config(&self) -> &RingConfig {
        &self.config
    }

    /// Number of f32 elements in the keys (or the values) of all layers and slots.
    pub(crate) fn storage_len(&self) -> usize {
        self.state.keys.len()
    }

    /// Returns the live cache state, for `export_state`.
    pub(crate) fn state_parts(&self) -> &RingState {
        &self.state
    }

    /// Returns the live cache state mutably, for `import_state`.
    pub(crate) fn state_parts_mut(&mut self) -> &mut RingState {
        &mut self.state
    }

    /// Drops pending appends.
    pub(crate) fn clear_staged(&mut self) {
        self.staged.fill(NOT_STAGED);
    }

    /// Number of slots: sinks plus window.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Number of cached entries.
    pub fn len(&self) -> usize {
        self.state.sinks_filled + self.state.window_len
    }

    /// Reports whether no entry is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of sink slots in use.
    pub fn sinks_filled(&self) -> usize {
        self.state.sinks_filled
    }

    /// Number of window entries.
    pub fn window_len(&self) -> usize {
        self.state.window_len
    }

    /// Number of entries evicted since creation.
    pub fn total_evicted(&self) -> u64 {
        self.state.total_evicted
    }

    /// Number of entries committed since creation.
    pub fn total_committed(&self) -> u64 {
        self.state.total_committed
    }

    /// Returns the position `p0` the i-th cached entry entered with.
    pub fn entered_at(&self, index: usize) -> Option<u32> {
        if index >= self.len() {
            return None;
        }
        Some(self.state.entered_at[self.slot_of_entry(index)])
    }

    /// Selects the SIMD loops when `enabled` and the build has them; returns whether they are in use.
    pub fn set_simd(&mut self, enabled: bool) -> bool {
        self.simd = enabled && SIMD_AVAILABLE;
        self.simd
    }

    /// Returns the largest chunk that `evict_for` can make room for: the free sinks plus the
    /// whole window, because sinks fill first and every later token goes to the window.
    pub fn max_incoming(&self) -> usize {
        self.capacity - self.state.sinks_filled
    }

    /// Evicts the oldest window entries so that `incoming` more entries fit; returns how many
    /// were evicted.
    pub fn evict_for(&mut self, incoming: usize) -> Result<usize, Status> {
        if incoming > self.max_incoming() {
            return Err(Status::ChunkTooLarge);
        }
        let needed = (self.len() + incoming).saturating_sub(self.capacity);
        // Here `needed <= window_len`: with the sinks full, `needed = window_len + incoming - window`.
        let state = &mut self.state;
        state.window_start = (state.window_start + needed) % self.config.window;
        state.window_len -= needed;
        state.total_evicted += needed as u64;
        Ok(needed)
    }

    /// Returns the staging buffers `(keys, values)` of one layer, `(kv_head, count, head_dim)`.
    pub fn staging_mut(&mut self) -> (&mut [f32], &mut [f32]) {
        (&mut self.staging_keys, &mut self.staging_values)
    }

    /// Raw pointers to the staging buffers, for the C interface.
    pub fn staging_ptrs(&mut self) -> (*mut f32, *mut f32) {
        (
            self.staging_keys.as_mut_ptr(),
            self.staging_values.as_mut_ptr(),
        )
    }

    /// Copies `count` staged entries of `layer` into the free slots they will occupy once
    /// `commit(count)` runs. The cached entries stay untouched.
    pub fn append(&mut self, layer: usize, count: usize) -> Result<(), Status> {
        if layer >= self.config.layers {
            return Err(Status::InvalidLayer);
        }
        if count > self.capacity - self.len() {
            return Err(Status::NoRoom);
        }
        let head_dim = self.config.head_dim;
        for head in 0..self.config.kv_heads {
            let base = (layer * self.config.kv_heads + head) * self.head_block;
            let staged_base = head * count * head_dim;
            for (first, slot, run) in self.free_runs(count) {
                let from = staged_base + first * head_dim..staged_base + (first + run) * head_dim;
                let to = base + slot * head_dim..base + (slot + run) * head_dim;
                copy_f32(
                    &mut self.state.keys[to.clone()],
                    &self.staging_keys[from.clone()],
                    self.simd,
                );
                copy_f32(
                    &mut self.state.values[to],
                    &self.staging_values[from],
                    self.simd,
                );
            }
        }
        self.staged[layer] = count;
        Ok(())
    }

    /// Makes the `count` entries appended to every layer part of the cache, at positions
    /// `len()..len() + count`.
    pub fn commit(&mut self, count: usize) -> Result<(), Status> {
        if count > self.capacity - self.len() {
            return Err(Status::NoRoom);
        }
        if self.staged.iter().any(|&staged| staged != count) {
            return Err(Status::NotStaged);
        }
        let length = self.len();
        for (first, slot, run) in self.free_runs(count) {
            for k in 0..run {
                self.state.entered_at[slot + k] = (length + first + k) as u32;
            }
        }
        let to_sinks = count.min(self.config.sinks - self.state.sinks_filled);
        self.state.sinks_filled += to_sinks;
        self.state.window_len += count - to_sinks;
        self.state.total_committed += count as u64;
        self.staged.fill(NOT_STAGED);
        Ok(())
    }

    /// Writes every layer's keys, rotated to their current positions, and values into the
    /// handoff buffers as `(kv_head, len, head_dim)`. Costs O(capacity) per layer and head.
    pub fn prepare_past(&mut self) -> Result<(), Status> {
        let head_dim = self.config.head_dim;
        let length = self.len();
        let sinks = self.state.sinks_filled;
        let layer_block = self.config.kv_heads * self.head_block;
        for layer in 0..self.config.layers {
            for head in 0..self.config.kv_heads {
                let base = (layer * self.config.kv_heads + head) * self.head_block;
                let out = layer * layer_block + head * length * head_dim;

                // Sinks never move, so their keys go out as stored.
                let sink_run = sinks * head_dim;
                copy_f32(
                    &mut self.past_keys[out..out + sink_run],
                    &self.state.keys[base..base + sink_run],
                    self.simd,
                );
                for (first, slot, run) in self.window_runs() {
                    let to = out + first * head_dim..out + (first + run) * head_dim;
                    let from = base + slot * head_dim..base + (slot + run) * head_dim;
                    copy_f32(
                        &mut self.past_values[to],
                        &self.state.values[from],
                        self.simd,
                    );
                }
                copy_f32(
                    &mut self.past_values[out..out + sink_run],
                    &self.state.values[base..base + sink_run],
                    self.simd,
                );

                for j in 0..self.state.window_len {
                    let position = sinks + j;
                    let slot = self.window_slot(j);
                    let delta = position as i64 - self.state.entered_at[slot] as i64;
                    let to = out + position * head_dim..out + (position + 1) * head_dim;
                    let from = base + slot * head_dim..base + (slot + 1) * head_dim;
                    let rotated = self.rope.rotate(
                        &mut self.past_keys[to],
                        &self.state.keys[from],
                        delta,
                        self.simd,
                    );
                    if !rotated {
                        return Err(Status::Corrupted);
                    }
                }
            }
        }
        Ok(())
    }

    /// Returns `(keys, values)` of one layer from the last `prepare_past`, each
    /// `(kv_head, len, head_dim)`.
    pub fn past(&self, layer: usize) -> Option<(&[f32], &[f32])> {
        if layer >= self.config.layers {
            return None;
        }
        let layer_block = self.config.kv_heads * self.head_block;
        let used = self.config.kv_heads * self.len() * self.config.head_dim;
        let range = layer * layer_block..layer * layer_block + used;
        Some((&self.past_keys[range.clone()], &self.past_values[range]))
    }

    /// Raw pointers to the handoff buffers of one layer, for the C interface.
    pub fn past_ptrs(&self, layer: usize) -> Option<(*const f32, *const f32)> {
        self.past(layer).map(|(k, v)| (k.as_ptr(), v.as_ptr()))
    }

    /// Saves the cache state, replacing any earlier snapshot. Allocates on the first call only.
    pub fn snapshot(&mut self) -> Result<(), Status> {
        match &mut self.saved {
            Some(saved) => copy_state(saved, &self.state),
            None => {
                let mut saved = RingState {
                    keys: try_zeroed(self.state.keys.len())?,
                    values: try_zeroed(self.state.values.len())?,
                    entered_at: Vec::new(),
                    ..self.state.clone_counters()
                };
                saved
                    .entered_at
                    .try_reserve_exact(self.capacity)
                    .map_err(|_| Status::OutOfMemory)?;
                saved.entered_at.resize(self.capacity, 0);
                copy_state(&mut saved, &self.state);
                self.saved = Some(saved);
            }
        }
        Ok(())
    }

    /// Brings back the state of the last snapshot and drops pending appends. The snapshot is
    /// kept, so it can be restored again.
    pub fn restore(&mut self) -> Result<(), Status> {
        let saved = self.saved.as_ref().ok_or(Status::NoSnapshot)?;
        copy_state(&mut self.state, saved);
        self.staged.fill(NOT_STAGED);
        Ok(())
    }

    /// Returns the slot of the i-th cached entry (`index < len()`).
    fn slot_of_entry(&self, index: usize) -> usize {
        if index < self.state.sinks_filled {
            index
        } else {
            self.window_slot(index - self.state.sinks_filled)
        }
    }

    /// Returns the slot of the j-th window entry, counting from the oldest.
    fn window_slot(&self, j: usize) -> usize {
        self.config.sinks + (self.state.window_start + j) % self.config.window
    }

    /// Splits the window entries into at most two runs of consecutive slots:
    /// `(index of the first entry within the window, first slot, run length)`.
    fn window_runs(&self) -> impl Iterator<Item = (usize, usize, usize)> {
        let window = self.config.window;
        let start = self.state.window_start;
        let first = self.state.window_len.min(window - start);
        let second = self.state.window_len - first;
        let sinks = self.config.sinks;
        let first_run = (0, sinks + start, first);
        let second_run = (first, sinks, second);
        // `prepare_past` writes window entries after the filled sinks.
        let shift = self.state.sinks_filled;
        [first_run, second_run]
            .into_iter()
            .filter(|&(_, _, run)| run > 0)
            .map(move |(index, slot, run)| (index + shift, slot, run))
    }

    /// Splits the slots the next `count` entries will occupy into at most three runs of
    /// consecutive slots: `(index of the first entry within the chunk, first slot, run length)`.
    fn free_runs(&self, count: usize) -> impl Iterator<Item = (usize, usize, usize)> {
        let sinks = self.config.sinks;
        let window = self.config.window;
        let to_sinks = count.min(sinks - self.state.sinks_filled);
        let to_window = count - to_sinks;
        let start = (self.state.window_start + self.state.window_len) % window;
        let first = to_window.min(window - start);
        let runs = [
            (0, self.state.sinks_filled, to_sinks),
            (to_sinks, sinks + start, first),
            (to_sinks + first, sinks, to_window - first),
        ];
        runs.into_iter().filter(|&(_, _, run)| run > 0)
    }
}

impl RingState {
    /// Returns a state with these counters and empty buffers.
    fn clone_counters(&self) -> RingState {
        RingState {
            keys: Vec::new(),
            values: Vec::new(),
            entered_at: Vec::new(),
            ..*self
        }
    }
}

/// Copies `from` into `to` without allocating; both come from the same ring.
fn copy_state(to: &mut RingState, from: &RingState) {
    to.keys.copy_from_slice(&from.keys);
    to.values.copy_from_slice(&from.values);
    to.entered_at.copy_from_slice(&from.entered_at);
    to.sinks_filled = from.sinks_filled;
    to.window_start = from.window_start;
    to.window_len = from.window_len;
    to.total_evicted = from.total_evicted;
    to.total_committed = from.total_committed;
}
