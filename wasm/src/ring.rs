//! The sink + window KV ring of every layer, with its staging and handoff buffers.
//!
//! Entries live in rows. The `len()` cached entries always fill rows `0..len()`: the sinks
//! take rows `0..sinks` for good, and an evicted window entry's row takes the entry of the
//! last row (swap-remove), so the rows stay dense. A small ring (`window_rows`) keeps the
//! window entries' rows from oldest to newest.
//!
//! Positions are virtual. The i-th cached entry (sinks first, then the window from oldest to
//! newest) sits at position `base + i`, and a new entry enters at `base + len()`. Each
//! eviction advances `base` by one, so a window entry keeps one position for its whole life
//! and its key, rotated once, never moves again. Attention under RoPE depends only on the
//! distance between query and key positions, so this is the same as placing every entry at
//! its index within the cache. Only the sinks change position: their keys are rotated to
//! `base + i` again before each forward pass, from the key the model emitted. Positions stay
//! below `max_positions`: when the next chunk would pass it, `rebase` rotates every window key
//! back by `base`, again from its emitted key, and sets `base` to 0. No key is rotated from an
//! already rotated key, so rounding never builds up over a long stream.
//!
//! The handoff buffers hold every layer's rotated keys and values in the layout the runtime
//! takes, `(kv_head, stride, head_dim)` with `stride` equal to `len()` after
//! `prepare_handoff`, so the past of a layer is a plain view of its block. Rows at or past
//! `stride` wait in a spill area after those rows until the next `prepare_handoff`, which
//! relayouts the block only when the length changed (while the cache fills, or when the chunk
//! size changes). In steady decoding the length before each step is `capacity - 1`, so
//! nothing is copied.

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
    /// Keys as emitted by the model, `(layer, kv_head, row, head_dim)` f32 over `capacity` rows.
    pub(crate) emitted_keys: Vec<f32>,
    /// Keys rotated to their current positions, in the handoff layout (see `KvRing::offset`).
    pub(crate) keys: Vec<f32>,
    /// Values, in the handoff layout.
    pub(crate) values: Vec<f32>,
    /// Position each row's entry entered the cache with, the one its emitted key is rotated to.
    pub(crate) entered_at: Vec<u32>,
    /// Position each row's key in `keys` is rotated to.
    pub(crate) position: Vec<u32>,
    /// Rows of the window entries, a ring of `window` from `window_start`, oldest first.
    pub(crate) window_rows: Vec<u32>,
    /// Index in `window_rows` of each window row's entry.
    pub(crate) ring_index: Vec<u32>,
    /// Number of sink slots in use; the window stays empty until this equals `sinks`.
    pub(crate) sinks_filled: usize,
    /// Index in `window_rows` of the oldest window entry.
    pub(crate) window_start: usize,
    /// Number of window entries, `0..=window`.
    pub(crate) window_len: usize,
    /// Position of the first cached entry; the i-th entry sits at `base + i`.
    pub(crate) base: usize,
    /// Rows per head in the leading part of each layer's handoff block.
    pub(crate) stride: usize,
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
    /// Positions handed to the model stay below this.
    max_positions: usize,
    /// f32 elements of one head of one layer across all rows: `capacity * head_dim`.
    head_block: usize,
    rope: RopeTable,
    simd: bool,
    state: RingState,
    /// Saved state, allocated by the first `snapshot`.
    saved: Option<RingState>,
    /// Count appended to each layer since the last commit, or `NOT_STAGED`.
    staged: Vec<usize>,
    /// New keys of one layer, `(kv_head, count, head_dim)` f32 with room for `capacity` tokens.
    /// `prepare_handoff` also uses it as scratch space.
    staging_keys: Vec<f32>,
    /// New values of one layer, laid out like `staging_keys`.
    staging_values: Vec<f32>,
    /// Keys in cache order rotated to their index, allocated by the first `prepare_past`.
    past_keys: Vec<f32>,
    /// Values in cache order, allocated by the first `prepare_past`.
    past_values: Vec<f32>,
    /// Bytes written to the handoff buffers by anything but `append`, since creation.
    prepared_bytes: u64,
}

impl KvRing {
    /// Allocates a ring whose positions stay below its capacity, so every entry sits at its
    /// index within the cache at every step and the window keys are rotated on every eviction.
    pub fn new(config: RingConfig, inv_freq: &[f64]) -> Result<Self, Status> {
        let capacity = config.sinks.saturating_add(config.window);
        KvRing::with_positions(config, inv_freq, capacity)
    }

    /// Allocates every buffer of a ring and the RoPE table for deltas below `max_positions`,
    /// which must be at least the capacity. Positions handed out stay below `max_positions`;
    /// the larger it is, the rarer the window keys are rotated.
    pub fn with_positions(
        config: RingConfig,
        inv_freq: &[f64],
        max_positions: usize,
    ) -> Result<Self, Status> {
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
        if max_positions < capacity || max_positions > i32::MAX as usize {
            return Err(Status::InvalidPositions);
        }
        let head_block = capacity
            .checked_mul(config.head_dim)
            .ok_or(Status::TooLarge)?;
        let storage_len = head_block
            .checked_mul(config.kv_heads)
            .and_then(|n| n.checked_mul(config.layers))
            .filter(|n| n.checked_mul(std::mem::size_of::<f32>()).is_some())
            .ok_or(Status::TooLarge)?;
        let staging_len = head_block * config.kv_heads;

        let rope = RopeTable::new(config.rope_dim, config.layout, inv_freq, max_positions - 1)?;
        let state = RingState {
            emitted_keys: try_zeroed(storage_len)?,
            keys: try_zeroed(storage_len)?,
            values: try_zeroed(storage_len)?,
            entered_at: try_zeroed_u32(capacity)?,
            position: try_zeroed_u32(capacity)?,
            window_rows: try_zeroed_u32(config.window)?,
            ring_index: try_zeroed_u32(capacity)?,
            sinks_filled: 0,
            window_start: 0,
            window_len: 0,
            base: 0,
            stride: 0,
            total_evicted: 0,
            total_committed: 0,
        };
        Ok(KvRing {
            config,
            capacity,
            max_positions,
            head_block,
            rope,
            simd: SIMD_AVAILABLE,
            state,
            saved: None,
            staged: vec![NOT_STAGED; config.layers],
            staging_keys: try_zeroed(staging_len)?,
            staging_values: try_zeroed(staging_len)?,
            past_keys: Vec::new(),
            past_values: Vec::new(),
            prepared_bytes: 0,
        })
    }

    /// Sizes the ring was created with.
    pub fn config(&self) -> &RingConfig {
        &self.config
    }

    /// Number of f32 elements in the keys (or the values) of all layers and rows.
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

    /// Positions handed out stay below this.
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// Position of the first cached entry; the i-th entry sits at `base() + i`.
    pub fn base(&self) -> usize {
        self.state.base
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

    /// Bytes written to ready the handoff buffers since creation: relayouts, sink rotations,
    /// rebases and the rows that evictions move.
    pub fn prepared_bytes(&self) -> u64 {
        self.prepared_bytes
    }

    /// Number of entries evicted since creation.
    pub fn total_evicted(&self) -> u64 {
        self.state.total_evicted
    }

    /// Number of entries committed since creation.
    pub fn total_committed(&self) -> u64 {
        self.state.total_committed
    }

    /// Returns the position the i-th cached entry entered with, the one the model rotated its
    /// key to.
    pub fn entered_at(&self, index: usize) -> Option<u32> {
        if index >= self.len() {
            return None;
        }
        Some(self.state.entered_at[self.row_of_entry(index)])
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

    /// Evicts the oldest window entries so that `incoming` more entries fit, and rebases the
    /// positions when the new entries would reach `max_positions`. Returns how many were
    /// evicted.
    pub fn evict_for(&mut self, incoming: usize) -> Result<usize, Status> {
        if incoming > self.max_incoming() {
            return Err(Status::ChunkTooLarge);
        }
        let needed = (self.len() + incoming).saturating_sub(self.capacity);
        // Here `needed <= window_len`: with the sinks full, `needed = window_len + incoming - window`.
        for _ in 0..needed {
            let window = self.config.window;
            let row = self.state.window_rows[self.state.window_start] as usize;
            let last = self.len() - 1;
            self.state.window_start = (self.state.window_start + 1) % window;
            self.state.window_len -= 1;
            self.state.base += 1;
            if last != row {
                self.move_row(last, row);
            }
        }
        self.state.total_evicted += needed as u64;
        if self.state.base + self.len() + incoming > self.max_positions {
            self.rebase()?;
        }
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

    /// Copies `count` staged entries of `layer` into the free rows they will occupy once
    /// `commit(count)` runs. The cached entries stay untouched.
    pub fn append(&mut self, layer: usize, count: usize) -> Result<(), Status> {
        if layer >= self.config.layers {
            return Err(Status::InvalidLayer);
        }
        let length = self.len();
        if count > self.capacity - length {
            return Err(Status::NoRoom);
        }
        let head_dim = self.config.head_dim;
        for head in 0..self.config.kv_heads {
            for k in 0..count {
                let row = length + k;
                let from = (head * count + k) * head_dim..(head * count + k + 1) * head_dim;
                let emitted = self.emitted_offset(layer, head, row);
                let to = self.offset(layer, head, row);
                let state = &mut self.state;
                copy_f32(
                    &mut state.emitted_keys[emitted..emitted + head_dim],
                    &self.staging_keys[from.clone()],
                    self.simd,
                );
                copy_f32(
                    &mut state.keys[to..to + head_dim],
                    &self.staging_keys[from.clone()],
                    self.simd,
                );
                copy_f32(
                    &mut state.values[to..to + head_dim],
                    &self.staging_values[from],
                    self.simd,
                );
            }
        }
        self.staged[layer] = count;
        Ok(())
    }

    /// Makes the `count` entries appended to every layer part of the cache, at positions
    /// `base() + len()..base() + len() + count`.
    pub fn commit(&mut self, count: usize) -> Result<(), Status> {
        let length = self.len();
        if count > self.capacity - length {
            return Err(Status::NoRoom);
        }
        if self.staged.iter().any(|&staged| staged != count) {
            return Err(Status::NotStaged);
        }
        if self.state.base + length + count > self.max_positions {
            return Err(Status::PositionLimit);
        }
        let to_sinks = count.min(self.config.sinks - self.state.sinks_filled);
        let state = &mut self.state;
        for k in 0..count {
            let row = length + k;
            let position = (state.base + row) as u32;
            state.entered_at[row] = position;
            state.position[row] = position;
            if k >= to_sinks {
                let index = (state.window_start + state.window_len) % self.config.window;
                state.window_rows[index] = row as u32;
                state.ring_index[row] = index as u32;
                state.window_len += 1;
            }
        }
        state.sinks_filled += to_sinks;
        state.total_committed += count as u64;
        self.staged.fill(NOT_STAGED);
        Ok(())
    }

    /// Readies the handoff buffers for a forward pass of `incoming` new entries and returns
    /// the position of the first of them, `base() + len()`. It rebases if the new entries would
    /// reach `max_positions` and rotates the sink keys to their current positions. When the
    /// length changed since the last call, it lays each layer out as `(kv_head, len, head_dim)`.
    pub fn prepare_handoff(&mut self, incoming: usize) -> Result<usize, Status> {
        let length = self.len();
        if incoming > self.capacity - length {
            return Err(Status::NoRoom);
        }
        if self.state.base + length + incoming > self.max_positions {
            self.rebase()?;
        }
        for row in 0..self.state.sinks_filled {
            let target = self.state.base + row;
            if self.state.position[row] as usize == target {
                continue;
            }
            let delta = target as i64 - self.state.entered_at[row] as i64;
            for layer in 0..self.config.layers {
                for head in 0..self.config.kv_heads {
                    self.rotate_row(layer, head, row, delta)?;
                }
            }
            self.state.position[row] = target as u32;
        }
        if self.state.stride != length {
            self.relayout(length);
        }
        Ok(self.state.base + length)
    }

    /// Returns `(keys, values)` of one layer as the runtime takes them, `(kv_head, len,
    /// head_dim)`; valid after `prepare_handoff` until the next append.
    pub fn handoff(&self, layer: usize) -> Option<(&[f32], &[f32])> {
        if layer >= self.config.layers {
            return None;
        }
        let start = layer * self.config.kv_heads * self.head_block;
        let range = start..start + self.config.kv_heads * self.len() * self.config.head_dim;
        Some((&self.state.keys[range.clone()], &self.state.values[range]))
    }

    /// Raw pointers to the handoff blocks of one layer, for the C interface.
    pub fn handoff_ptrs(&self, layer: usize) -> Option<(*const f32, *const f32)> {
        self.handoff(layer).map(|(k, v)| (k.as_ptr(), v.as_ptr()))
    }

    /// Writes every layer's keys, rotated to their index within the cache, and values into
    /// separate buffers in cache order `(kv_head, len, head_dim)`, for inspection. Allocates
    /// them on the first call. Costs O(capacity) per layer and head.
    pub fn prepare_past(&mut self) -> Result<(), Status> {
        if self.past_keys.is_empty() {
            self.past_keys = try_zeroed(self.storage_len())?;
            self.past_values = try_zeroed(self.storage_len())?;
        }
        let head_dim = self.config.head_dim;
        let length = self.len();
        let layer_block = self.config.kv_heads * self.head_block;
        for layer in 0..self.config.layers {
            for head in 0..self.config.kv_heads {
                let out = layer * layer_block + head * length * head_dim;
                for index in 0..length {
                    let row = self.row_of_entry(index);
                    let to = out + index * head_dim..out + (index + 1) * head_dim;
                    let value = self.offset(layer, head, row);
                    copy_f32(
                        &mut self.past_values[to.clone()],
                        &self.state.values[value..value + head_dim],
                        self.simd,
                    );
                    let emitted = self.emitted_offset(layer, head, row);
                    let delta = index as i64 - self.state.entered_at[row] as i64;
                    let rotated = self.rope.rotate(
                        &mut self.past_keys[to],
                        &self.state.emitted_keys[emitted..emitted + head_dim],
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
    /// `(kv_head, len, head_dim)`; `None` before the first `prepare_past`.
    pub fn past(&self, layer: usize) -> Option<(&[f32], &[f32])> {
        if layer >= self.config.layers || self.past_keys.is_empty() {
            return None;
        }
        let layer_block = self.config.kv_heads * self.head_block;
        let used = self.config.kv_heads * self.len() * self.config.head_dim;
        let range = layer * layer_block..layer * layer_block + used;
        Some((&self.past_keys[range.clone()], &self.past_values[range]))
    }

    /// Raw pointers to the cache-order buffers of one layer, for the C interface.
    pub fn past_ptrs(&self, layer: usize) -> Option<(*const f32, *const f32)> {
        self.past(layer).map(|(k, v)| (k.as_ptr(), v.as_ptr()))
    }

    /// Saves the cache state, replacing any earlier snapshot. Allocates on the first call only.
    pub fn snapshot(&mut self) -> Result<(), Status> {
        match &mut self.saved {
            Some(saved) => copy_state(saved, &self.state),
            None => {
                let mut saved = RingState {
                    emitted_keys: try_zeroed(self.state.emitted_keys.len())?,
                    keys: try_zeroed(self.state.keys.len())?,
                    values: try_zeroed(self.state.values.len())?,
                    entered_at: try_zeroed_u32(self.capacity)?,
                    position: try_zeroed_u32(self.capacity)?,
                    window_rows: try_zeroed_u32(self.config.window)?,
                    ring_index: try_zeroed_u32(self.capacity)?,
                    ..self.state.clone_counters()
                };
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

    /// Returns the row of the i-th cached entry (`index < len()`).
    pub(crate) fn row_of_entry(&self, index: usize) -> usize {
        if index < self.state.sinks_filled {
            index
        } else {
            let j = index - self.state.sinks_filled;
            self.state.window_rows[(self.state.window_start + j) % self.config.window] as usize
        }
    }

    /// Returns the offset of a row of one head of one layer in the handoff buffers: rows below
    /// `stride` lie at `(kv_head, stride, head_dim)` from the layer's start, later rows in a
    /// spill area of `(kv_head, capacity - stride, head_dim)` after them.
    pub(crate) fn offset(&self, layer: usize, head: usize, row: usize) -> usize {
        let head_dim = self.config.head_dim;
        let start = layer * self.config.kv_heads * self.head_block;
        let stride = self.state.stride;
        if row < stride {
            start + (head * stride + row) * head_dim
        } else {
            let spill = self.config.kv_heads * stride;
            start + (spill + head * (self.capacity - stride) + row - stride) * head_dim
        }
    }

    /// Returns the offset of a row of one head of one layer in `emitted_keys`.
    pub(crate) fn emitted_offset(&self, layer: usize, head: usize, row: usize) -> usize {
        (layer * self.config.kv_heads + head) * self.head_block + row * self.config.head_dim
    }

    /// Sets the handoff key of a row from its emitted key rotated by `delta`.
    fn rotate_row(&mut self, layer: usize, head: usize, row: usize, delta: i64) -> Result<(), Status> {
        let head_dim = self.config.head_dim;
        let to = self.offset(layer, head, row);
        let from = self.emitted_offset(layer, head, row);
        let rotated = self.rope.rotate(
            &mut self.state.keys[to..to + head_dim],
            &self.state.emitted_keys[from..from + head_dim],
            delta,
            self.simd,
        );
        self.prepared_bytes += (head_dim * 4) as u64;
        if rotated {
            Ok(())
        } else {
            Err(Status::Corrupted)
        }
    }

    /// Moves the window entry of row `from` to the free row `to`, in every layer and head.
    fn move_row(&mut self, from: usize, to: usize) {
        let head_dim = self.config.head_dim;
        for layer in 0..self.config.layers {
            for head in 0..self.config.kv_heads {
                let (source, target) = (self.offset(layer, head, from), self.offset(layer, head, to));
                let state = &mut self.state;
                state.keys.copy_within(source..source + head_dim, target);
                state.values.copy_within(source..source + head_dim, target);
                let (source, target) = (
                    self.emitted_offset(layer, head, from),
                    self.emitted_offset(layer, head, to),
                );
                self.state
                    .emitted_keys
                    .copy_within(source..source + head_dim, target);
            }
        }
        // Keys, values and emitted keys of one row per layer and head.
        let rows = self.config.layers * self.config.kv_heads;
        self.prepared_bytes += (3 * rows * head_dim * 4) as u64;
        let state = &mut self.state;
        state.entered_at[to] = state.entered_at[from];
        state.position[to] = state.position[from];
        let index = state.ring_index[from];
        state.ring_index[to] = index;
        state.window_rows[index as usize] = to as u32;
    }

    /// Moves every position down by `base` and sets `base` to 0: rotates each window key from
    /// its emitted key to its new position. The sinks follow in `prepare_handoff`.
    fn rebase(&mut self) -> Result<(), Status> {
        let shift = self.state.base;
        if shift == 0 {
            return Ok(());
        }
        for row in self.state.sinks_filled..self.len() {
            let target = self.state.position[row] as usize - shift;
            let delta = target as i64 - self.state.entered_at[row] as i64;
            for layer in 0..self.config.layers {
                for head in 0..self.config.kv_heads {
                    self.rotate_row(layer, head, row, delta)?;
                }
            }
            self.state.position[row] = target as u32;
        }
        self.state.base = 0;
        Ok(())
    }

    /// Lays every layer's handoff block out with `stride` rows per head. The `len()` entries
    /// fill rows `0..len()`, and `stride` must be `len()`, so the spill area ends up empty.
    /// Goes through the staging buffers, which hold one layer.
    fn relayout(&mut self, stride: usize) {
        let head_dim = self.config.head_dim;
        let kv_heads = self.config.kv_heads;
        let run = stride * head_dim;
        for layer in 0..self.config.layers {
            for head in 0..kv_heads {
                for row in 0..stride {
                    let from = self.offset(layer, head, row);
                    let to = (head * stride + row) * head_dim;
                    self.staging_keys[to..to + head_dim]
                        .copy_from_slice(&self.state.keys[from..from + head_dim]);
                    self.staging_values[to..to + head_dim]
                        .copy_from_slice(&self.state.values[from..from + head_dim]);
                }
            }
            let start = layer * kv_heads * self.head_block;
            let used = kv_heads * run;
            copy_f32(
                &mut self.state.keys[start..start + used],
                &self.staging_keys[..used],
                self.simd,
            );
            copy_f32(
                &mut self.state.values[start..start + used],
                &self.staging_values[..used],
                self.simd,
            );
        }
        self.state.stride = stride;
        // Keys and values, into the staging buffers and back.
        let elements = self.config.layers * kv_heads * run;
        self.prepared_bytes += (2 * 2 * elements * 4) as u64;
    }

    /// Rebuilds the handoff keys of the current state from the emitted keys, rotating each
    /// to its row's position.
    pub(crate) fn rebuild_handoff(&mut self) -> Result<(), Status> {
        let head_dim = self.config.head_dim;
        for row in 0..self.len() {
            let delta = self.state.position[row] as i64 - self.state.entered_at[row] as i64;
            for layer in 0..self.config.layers {
                for head in 0..self.config.kv_heads {
                    if delta == 0 {
                        let (from, to) = (self.emitted_offset(layer, head, row), self.offset(layer, head, row));
                        let state = &mut self.state;
                        state.keys[to..to + head_dim]
                            .copy_from_slice(&state.emitted_keys[from..from + head_dim]);
                    } else {
                        self.rotate_row(layer, head, row, delta)?;
                    }
                }
            }
        }
        Ok(())
    }
}

impl RingState {
    /// Returns a state with these counters and empty buffers.
    fn clone_counters(&self) -> RingState {
        RingState {
            emitted_keys: Vec::new(),
            keys: Vec::new(),
            values: Vec::new(),
            entered_at: Vec::new(),
            position: Vec::new(),
            window_rows: Vec::new(),
            ring_index: Vec::new(),
            ..*self
        }
    }
}

/// Allocates `len` zeroed u32, reporting a failed allocation instead of aborting.
pub(crate) fn try_zeroed_u32(len: usize) -> Result<Vec<u32>, Status> {
    let mut buffer = Vec::new();
    buffer
        .try_reserve_exact(len)
        .map_err(|_| Status::OutOfMemory)?;
    buffer.resize(len, 0);
    Ok(buffer)
}

/// Copies `from` into `to` without allocating; both come from the same ring.
fn copy_state(to: &mut RingState, from: &RingState) {
    to.emitted_keys.copy_from_slice(&from.emitted_keys);
    to.keys.copy_from_slice(&from.keys);
    to.values.copy_from_slice(&from.values);
    to.entered_at.copy_from_slice(&from.entered_at);
    to.position.copy_from_slice(&from.position);
    to.window_rows.copy_from_slice(&from.window_rows);
    to.ring_index.copy_from_slice(&from.ring_index);
    to.sinks_filled = from.sinks_filled;
    to.window_start = from.window_start;
    to.window_len = from.window_len;
    to.base = from.base;
    to.stride = from.stride;
    to.total_evicted = from.total_evicted;
    to.total_committed = from.total_committed;
}
