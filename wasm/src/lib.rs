//! StreamingLLM KV cache kernel: per layer, `sinks` slots that keep the first tokens of a
//! stream for good and a circular window of the `window` most recent tokens.
//!
//! The crate builds for `wasm32-unknown-unknown` and exports a C interface (`kv_*`) that the
//! TypeScript wrapper calls through `WebAssembly.instantiate`. A handle is a pointer to a
//! [`KvRing`]. Functions report bad sizes and misuse with [`Status`] codes instead of panicking.
//!
//! One step of a stream:
//! 1. `kv_evict_for(n)` drops the oldest window entries so that `n` new entries fit.
//! 2. For each layer, the caller writes the new keys and values as `(kv_head, n, head_dim)`
//!    into the staging buffers (`kv_staging_keys`, `kv_staging_values`) and calls
//!    `kv_append(layer, n)`.
//! 3. `kv_commit(n)` gives the new entries positions `base + len..base + len + n`.
//!
//! Before the forward pass of a chunk, after `kv_evict_for(n)`, `kv_prepare_handoff(n)` returns
//! the position of the chunk's first token and readies the past of every layer
//! (`kv_handoff_keys`, `kv_handoff_values`), `(kv_head, len, head_dim)`, in row order rather
//! than cache order (see [`ring`]). `kv_prepare_past()` writes the past in cache order, each key
//! rotated to its index, into separate buffers (`kv_past_keys`, `kv_past_values`) for inspection.
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod ring;
pub mod rope;
pub mod state;

pub use ring::{KvRing, RingConfig};
pub use rope::{RopeLayout, RopeTable};

use std::alloc::{alloc, dealloc, Layout};

/// Result codes of the C interface. `Ok` is 0; functions that return a count return the
/// negated code on failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum Status {
    /// Success.
    Ok = 0,
    /// A null handle or buffer pointer.
    NullPointer = 1,
    /// `layers` is 0.
    InvalidLayers = 2,
    /// `kv_heads` is 0.
    InvalidKvHeads = 3,
    /// `head_dim` is 0.
    InvalidHeadDim = 4,
    /// `window` is 0.
    InvalidWindow = 5,
    /// The rotary dim is odd or larger than `head_dim`.
    InvalidRopeDim = 6,
    /// The layout code is neither 0 (adjacent) nor 1 (halves).
    InvalidLayout = 7,
    /// An inverse frequency is not finite.
    InvalidInvFreq = 8,
    /// The sizes overflow the address space or the 31-bit capacity limit.
    TooLarge = 9,
    /// An allocation failed.
    OutOfMemory = 10,
    /// The chunk exceeds the free sinks plus the whole window, so no eviction makes room.
    ChunkTooLarge = 11,
    /// The chunk exceeds the free slots; call `kv_evict_for` first.
    NoRoom = 12,
    /// The layer index is not below `layers`.
    InvalidLayer = 13,
    /// `kv_commit` ran before every layer was appended with the same count.
    NotStaged = 14,
    /// `kv_restore` ran before any `kv_snapshot`.
    NoSnapshot = 15,
    /// A stored position lies outside the RoPE table; the ring state is inconsistent.
    Corrupted = 16,
    /// Imported state bytes have the wrong length, version or sizes, or inconsistent counters.
    InvalidState = 17,
    /// The position limit is below the capacity or above `i32::MAX`.
    InvalidPositions = 18,
    /// `kv_commit` would give positions past the limit; call `kv_evict_for` first.
    PositionLimit = 19,
}

impl Status {
    fn code(result: Result<(), Status>) -> i32 {
        match result {
            Ok(()) => Status::Ok as i32,
            Err(status) => status as i32,
        }
    }
}

/// Alignment of buffers from `kv_alloc`, enough for f64.
const ALLOC_ALIGN: usize = 8;

/// Allocates `bytes` bytes aligned to 8 for the caller to fill; returns null on failure or
/// when `bytes` is 0. Release it with `kv_dealloc(ptr, bytes)`.
#[no_mangle]
pub extern "C" fn kv_alloc(bytes: usize) -> *mut u8 {
    match Layout::from_size_align(bytes, ALLOC_ALIGN) {
        Ok(layout) if bytes > 0 => {
            // SAFETY: the layout has a non-zero size, as `alloc` requires.
            unsafe { alloc(layout) }
        }
        _ => std::ptr::null_mut(),
    }
}

/// Releases a buffer from `kv_alloc`. A null `ptr` is ignored.
///
/// # Safety
/// `ptr` must come from `kv_alloc(bytes)` with the same `bytes` and must not be used again.
#[no_mangle]
pub unsafe extern "C" fn kv_dealloc(ptr: *mut u8, bytes: usize) {
    if ptr.is_null() {
        return;
    }
    if let Ok(layout) = Layout::from_size_align(bytes, ALLOC_ALIGN) {
        // SAFETY: the caller passes a pointer from `kv_alloc(bytes)`, which used this layout.
        unsafe { dealloc(ptr, layout) }
    }
}

/// Creates a ring and writes its handle to `*out_handle`; returns a [`Status`] code.
///
/// `layout` is 0 for adjacent pairs and 1 for halves. `inv_freq` points to `rope_dim / 2`
/// f64 inverse frequencies, which are copied.
///
/// # Safety
/// `inv_freq` must point to `rope_dim / 2` readable f64 (it may be null when `rope_dim` is 0)
/// and `out_handle` to a writable `usize`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn kv_create(
    layers: u32,
    kv_heads: u32,
    head_dim: u32,
    sinks: u32,
    window: u32,
    rope_dim: u32,
    layout: u32,
    inv_freq: *const f64,
    out_handle: *mut usize,
) -> i32 {
    // SAFETY: forwarded from the caller's contract; 0 selects the capacity as the limit.
    unsafe {
        kv_create_positioned(
            layers, kv_heads, head_dim, sinks, window, rope_dim, layout, inv_freq, 0, out_handle,
        )
    }
}

/// Creates a ring whose positions stay below `max_positions` (0 for the capacity) and writes
/// its handle to `*out_handle`; returns a [`Status`] code. The other arguments are those of
/// [`kv_create`].
///
/// # Safety
/// As for [`kv_create`].
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn kv_create_positioned(
    layers: u32,
    kv_heads: u32,
    head_dim: u32,
    sinks: u32,
    window: u32,
    rope_dim: u32,
    layout: u32,
    inv_freq: *const f64,
    max_positions: u32,
    out_handle: *mut usize,
) -> i32 {
    if out_handle.is_null() || (inv_freq.is_null() && rope_dim > 0) {
        return Status::NullPointer as i32;
    }
    let layout = match RopeLayout::from_code(layout) {
        Ok(layout) => layout,
        Err(status) => return status as i32,
    };
    let pairs = (rope_dim / 2) as usize;
    let inv_freq: &[f64] = if pairs == 0 {
        &[]
    } else {
        // SAFETY: the caller guarantees `rope_dim / 2` readable f64 at the non-null `inv_freq`.
        unsafe { std::slice::from_raw_parts(inv_freq, pairs) }
    };
    let config = RingConfig {
        layers: layers as usize,
        kv_heads: kv_heads as usize,
        head_dim: head_dim as usize,
        sinks: sinks as usize,
        window: window as usize,
        rope_dim: rope_dim as usize,
        layout,
    };
    let created = if max_positions == 0 {
        KvRing::new(config, inv_freq)
    } else {
        KvRing::with_positions(config, inv_freq, max_positions as usize)
    };
    match created {
        Ok(ring) => {
            // SAFETY: the caller guarantees that `out_handle` is writable; it is not null.
            unsafe { *out_handle = Box::into_raw(Box::new(ring)) as usize };
            Status::Ok as i32
        }
        Err(status) => status as i32,
    }
}

/// Frees a ring. A null handle is ignored.
///
/// # Safety
/// `handle` must come from `kv_create` and must not be used again.
#[no_mangle]
pub unsafe extern "C" fn kv_free(handle: *mut KvRing) {
    if !handle.is_null() {
        // SAFETY: the caller passes a live handle from `kv_create`, which came from `Box::into_raw`.
        drop(unsafe { Box::from_raw(handle) });
    }
}

/// Turns a handle into a reference, or `None` when it is null.
///
/// # Safety
/// A non-null `handle` must be a live handle from `kv_create` with no other reference to it.
unsafe fn ring<'a>(handle: *mut KvRing) -> Option<&'a mut KvRing> {
    // SAFETY: forwarded from the caller's contract.
    unsafe { handle.as_mut() }
}

/// Evicts the oldest window entries so that `incoming` new entries fit; returns the number
/// evicted, or a negated [`Status`] code.
///
/// # Safety
/// `handle` must be null or a live handle from `kv_create`.
#[no_mangle]
pub unsafe extern "C" fn kv_evict_for(handle: *mut KvRing, incoming: u32) -> i32 {
    // SAFETY: forwarded from the caller's contract.
    let ring = match unsafe { ring(handle) } {
        Some(ring) => ring,
        None => return -(Status::NullPointer as i32),
    };
    match ring.evict_for(incoming as usize) {
        // The count is at most the window, which fits in i32.
        Ok(evicted) => evicted as i32,
        Err(status) => -(status as i32),
    }
}

/// Returns the staging buffer for new keys of one layer, `(kv_head, count, head_dim)` f32
/// with room for `capacity` tokens; null for a null handle.
///
/// # Safety
/// `handle` must be null or a live handle from `kv_create`.
#[no_mangle]
pub unsafe extern "C" fn kv_staging_keys(handle: *mut KvRing) -> *mut f32 {
    // SAFETY: forwarded from the caller's contract.
    match unsafe { ring(handle) } {
        Some(ring) => ring.staging_ptrs().0,
        None => std::ptr::null_mut(),
    }
}

/// Returns the staging buffer for new values, laid out like `kv_staging_keys`.
///
/// # Safety
/// `handle` must be null or a live handle from `kv_create`.
#[no_mangle]
pub unsafe extern "C" fn kv_staging_values(handle: *mut KvRing) -> *mut f32 {
    // SAFETY: forwarded from the caller's contract.
    match unsafe { ring(handle) } {
        Some(ring) => ring.staging_ptrs().1,
        None => std::ptr::null_mut(),
    }
}

/// Copies `count` staged entries of `layer` into the ring; returns a [`Status`] code.
///
/// # Safety
/// `handle` must be null or a live handle from `kv_create`.
#[no_mangle]
pub unsafe extern "C" fn kv_append(handle: *mut KvRing, layer: u32, count: u32) -> i32 {
    // SAFETY: forwarded from the caller's contract.
    match unsafe { ring(handle) } {
        Some(ring) => Status::code(ring.append(layer as usize, count as usize)),
        None => Status::NullPointer as i32,
    }
}

/// Makes the `count` entries appended to every layer part of the cache; returns a [`Status`] code.
///
/// # Safety
/// `handle` must be null or a live handle from `kv_create`.
#[no_mangle]
pub unsafe extern "C" fn kv_commit(handle: *mut KvRing, count: u32) -> i32 {
    // SAFETY: forwarded from the caller's contract.
    match unsafe { ring(handle) } {
        Some(ring) => Status::code(ring.commit(count as usize)),
        None => Status::NullPointer as i32,
    }
}

/// Readies the past of every layer for a forward pass of `incoming` new entries. Returns the
/// position of the first of them, or a negated [`Status`] code.
///
/// # Safety
/// `handle` must be null or a live handle from `kv_create`.
#[no_mangle]
pub unsafe extern "C" fn kv_prepare_handoff(handle: *mut KvRing, incoming: u32) -> i32 {
    // SAFETY: forwarded from the caller's contract.
    match unsafe { ring(handle) } {
        // Positions are below the limit, which fits in i32.
        Some(ring) => match ring.prepare_handoff(incoming as usize) {
            Ok(position) => position as i32,
            Err(status) => -(status as i32),
        },
        None => -(Status::NullPointer as i32),
    }
}

/// Returns the past keys of `layer` for the runtime, `(kv_head, len, head_dim)` f32 in row
/// order, valid after `kv_prepare_handoff`. Returns null for a null handle or a layer out of
/// range.
///
/// # Safety
/// `handle` must be null or a live handle from `kv_create`.
#[no_mangle]
pub unsafe extern "C" fn kv_handoff_keys(handle: *mut KvRing, layer: u32) -> *const f32 {
    // SAFETY: forwarded from the caller's contract.
    match unsafe { ring(handle) }.and_then(|ring| ring.handoff_ptrs(layer as usize)) {
        Some((keys, _)) => keys,
        None => std::ptr::null(),
    }
}

/// Returns the past values of `layer` for the runtime, in the rows of `kv_handoff_keys`.
///
/// # Safety
/// `handle` must be null or a live handle from `kv_create`.
#[no_mangle]
pub unsafe extern "C" fn kv_handoff_values(handle: *mut KvRing, layer: u32) -> *const f32 {
    // SAFETY: forwarded from the caller's contract.
    match unsafe { ring(handle) }.and_then(|ring| ring.handoff_ptrs(layer as usize)) {
        Some((_, values)) => values,
        None => std::ptr::null(),
    }
}

/// Fills the cache-order buffers of every layer, allocating them on the first call; returns a
/// [`Status`] code.
///
/// # Safety
/// `handle` must be null or a live handle from `kv_create`.
#[no_mangle]
pub unsafe extern "C" fn kv_prepare_past(handle: *mut KvRing) -> i32 {
    // SAFETY: forwarded from the caller's contract.
    match unsafe { ring(handle) } {
        Some(ring) => Status::code(ring.prepare_past()),
        None => Status::NullPointer as i32,
    }
}

/// Returns the cache-order keys of `layer` from the last `kv_prepare_past`, `(kv_head, len,
/// head_dim)` f32, each rotated to its index. Returns null for a null handle, a layer out of
/// range, or before the first `kv_prepare_past`.
///
/// # Safety
/// `handle` must be null or a live handle from `kv_create`.
#[no_mangle]
pub unsafe extern "C" fn kv_past_keys(handle: *mut KvRing, layer: u32) -> *const f32 {
    // SAFETY: forwarded from the caller's contract.
    match unsafe { ring(handle) }.and_then(|ring| ring.past_ptrs(layer as usize)) {
        Some((keys, _)) => keys,
        None => std::ptr::null(),
    }
}

/// Returns the cache-order values of `layer`, laid out like `kv_past_keys`.
///
/// # Safety
/// `handle` must be null or a live handle from `kv_create`.
#[no_mangle]
pub unsafe extern "C" fn kv_past_values(handle: *mut KvRing, layer: u32) -> *const f32 {
    // SAFETY: forwarded from the caller's contract.
    match unsafe { ring(handle) }.and_then(|ring| ring.past_ptrs(layer as usize)) {
        Some((_, values)) => values,
        None => std::ptr::null(),
    }
}

/// Saves the cache state, replacing an earlier snapshot; returns a [`Status`] code. The first
/// call allocates, so the wasm memory may grow.
///
/// # Safety
/// `handle` must be null or a live handle from `kv_create`.
#[no_mangle]
pub unsafe extern "C" fn kv_snapshot(handle: *mut KvRing) -> i32 {
    // SAFETY: forwarded from the caller's contract.
    match unsafe { ring(handle) } {
        Some(ring) => Status::code(ring.snapshot()),
        None => Status::NullPointer as i32,
    }
}

/// Brings back the last snapshot and drops pending appends; returns a [`Status`] code.
///
/// # Safety
/// `handle` must be null or a live handle from `kv_create`.
#[no_mangle]
pub unsafe extern "C" fn kv_restore(handle: *mut KvRing) -> i32 {
    // SAFETY: forwarded from the caller's contract.
    match unsafe { ring(handle) } {
        Some(ring) => Status::code(ring.restore()),
        None => Status::NullPointer as i32,
    }
}

/// Selects the SIMD loops (`enabled` = 1) or the scalar loops (0); returns 1 when the SIMD
/// loops are in use afterwards, 0 otherwise, and -1 for a null handle.
///
/// # Safety
/// `handle` must be null or a live handle from `kv_create`.
#[no_mangle]
pub unsafe extern "C" fn kv_set_simd(handle: *mut KvRing, enabled: u32) -> i32 {
    // SAFETY: forwarded from the caller's contract.
    match unsafe { ring(handle) } {
        Some(ring) => ring.set_simd(enabled != 0) as i32,
        None => -(Status::NullPointer as i32),
    }
}

/// Selector of the count `kv_query` returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Query {
    /// Number of cached entries.
    Length = 0,
    /// Number of sink slots in use.
    SinksFilled = 1,
    /// Number of window entries.
    WindowLength = 2,
    /// Sinks plus window.
    Capacity = 3,
    /// Entries evicted since creation.
    TotalEvicted = 4,
    /// Entries committed since creation.
    TotalCommitted = 5,
    /// Largest chunk `kv_evict_for` can make room for.
    MaxIncoming = 6,
    /// Bytes that `kv_export_state` writes.
    StateBytes = 7,
    /// Limit of the positions handed out.
    MaxPositions = 8,
    /// Position of the first cached entry.
    Base = 9,
    /// Bytes written to ready the handoff buffers since creation.
    PreparedBytes = 10,
}

/// Returns the count selected by `query` (see [`Query`]) as f64, exact below 2^53; -1 for a
/// null handle or an unknown query.
///
/// # Safety
/// `handle` must be null or a live handle from `kv_create`.
#[no_mangle]
pub unsafe extern "C" fn kv_query(handle: *mut KvRing, query: u32) -> f64 {
    // SAFETY: forwarded from the caller's contract.
    let ring = match unsafe { ring(handle) } {
        Some(ring) => ring,
        None => return -1.0,
    };
    match query {
        0 => ring.len() as f64,
        1 => ring.sinks_filled() as f64,
        2 => ring.window_len() as f64,
        3 => ring.capacity() as f64,
        4 => ring.total_evicted() as f64,
        5 => ring.total_committed() as f64,
        6 => ring.max_incoming() as f64,
        7 => ring.state_bytes() as f64,
        8 => ring.max_positions() as f64,
        9 => ring.base() as f64,
        10 => ring.prepared_bytes() as f64,
        _ => -1.0,
    }
}

/// Returns the position the `index`-th cached entry entered with; -1 for a null handle or an
/// index not below the length.
///
/// # Safety
/// `handle` must be null or a live handle from `kv_create`.
#[no_mangle]
pub unsafe extern "C" fn kv_entered_at(handle: *mut KvRing, index: u32) -> i32 {
    // SAFETY: forwarded from the caller's contract.
    match unsafe { ring(handle) }.and_then(|ring| ring.entered_at(index as usize)) {
        // Positions are below the limit, which fits in i32.
        Some(position) => position as i32,
        None => -1,
    }
}

/// Writes the whole cache state (see [`state`]) to `out`, which must hold exactly
/// `kv_query(handle, 7)` bytes; returns a [`Status`] code.
///
/// # Safety
/// `handle` must be null or a live handle from `kv_create`, and `out` must point to `bytes`
/// writable bytes.
#[no_mangle]
pub unsafe extern "C" fn kv_export_state(handle: *mut KvRing, out: *mut u8, bytes: usize) -> i32 {
    // SAFETY: forwarded from the caller's contract.
    let ring = match unsafe { ring(handle) } {
        Some(ring) => ring,
        None => return Status::NullPointer as i32,
    };
    if out.is_null() {
        return Status::NullPointer as i32;
    }
    // SAFETY: the caller guarantees `bytes` writable bytes at the non-null `out`.
    let out = unsafe { std::slice::from_raw_parts_mut(out, bytes) };
    Status::code(ring.export_state(out))
}

/// Replaces the cache state with `bytes` bytes from `kv_export_state` of a ring with the same
/// sizes; returns a [`Status`] code and leaves the ring unchanged on failure.
///
/// # Safety
/// `handle` must be null or a live handle from `kv_create`, and `input` must point to `bytes`
/// readable bytes that do not overlap the ring's buffers.
#[no_mangle]
pub unsafe extern "C" fn kv_import_state(handle: *mut KvRing, input: *const u8, bytes: usize) -> i32 {
    // SAFETY: forwarded from the caller's contract.
    let ring = match unsafe { ring(handle) } {
        Some(ring) => ring,
        None => return Status::NullPointer as i32,
    };
    if input.is_null() {
        return Status::NullPointer as i32;
    }
    // SAFETY: the caller guarantees `bytes` readable bytes at the non-null `input`.
    let input = unsafe { std::slice::from_raw_parts(input, bytes) };
    Status::code(ring.import_state(input))
}

#[cfg(test)]
mod tests;
