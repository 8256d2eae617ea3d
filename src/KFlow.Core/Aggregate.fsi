// Aggregation: a user state machine (init, add, tick, flush) turned into a stage that merges the
// tokens of its inputs into its outputs, and the ready-made buffer (by count, bytes, age).
namespace KFlow

open System

/// <summary>A user aggregation from inputs <c>'a</c> to outputs <c>'b</c>, its state hidden.</summary>
/// <remarks>An output accounts for every input added since the previous output, the current input
/// included: the output holds all their tokens, so they complete when the output is finished (sunk).
/// An aggregator must therefore not emit while it still holds values of those inputs in its state.</remarks>
[<Sealed; NoEquality; NoComparison>]
type Aggregator<'a, 'b>

/// Building aggregators and their stage.
[<RequireQualifiedAccess>]
module Aggregator =
    /// <summary>An aggregator from its state machine.</summary>
    /// <param name="init">The empty state, also the state after a flush.</param>
    /// <param name="add">Adds an input at time <c>now</c>; may emit an output.</param>
    /// <param name="tick">The clock ticked; may emit an output (e.g. the oldest input is too old).</param>
    /// <param name="flush">Shutdown or revoke: the output for what is held, if any; the state then
    /// returns to <c>init</c>. None completes the held inputs' tokens without output.</param>
    val create:
        init: 's ->
        add: (DateTimeOffset -> 'a -> 's -> 's * 'b option) ->
        tick: (DateTimeOffset -> 's -> 's * 'b option) ->
        flush: ('s -> 'b option) ->
            Aggregator<'a, 'b>

    /// <summary>The stage running an aggregator: it flushes on <c>Flush</c> and on <c>Revoked</c> (any
    /// partition). An output emitted while no input is held (no tokens to carry) is discarded.</summary>
    val stage: aggregator: Aggregator<'a, 'b> -> Stage<'a, 'b>

/// <summary>The limits of a ready-made buffer. It emits its batch as soon as one limit is reached.</summary>
[<NoEquality; NoComparison>]
type BufferOptions<'a> = {
    /// Emit when this many values are buffered. Default None (no count limit).
    MaxCount: int option
    /// Emit when the buffered values' total Size reaches this (the batch may pass it by its last
    /// value). Default None (no size limit).
    MaxBytes: int64 option
    /// The size of one value, for MaxBytes. Default 1 per value.
    Size: 'a -> int64
    /// Emit on the first tick (or add) at which the oldest buffered value has waited this long.
    /// Default None (no age limit).
    MaxAge: TimeSpan option
}

/// The ready-made buffer: batches of values in arrival order.
[<RequireQualifiedAccess>]
module Buffer =
    /// No limit set; set at least one with `{ Buffer.options with ... }`.
    val options<'a> : BufferOptions<'a>

    /// A buffer with the given limits. At least one limit must be set, and each must be ≥ 1.
    val create: options: BufferOptions<'a> -> Aggregator<'a, 'a list>

    /// Batches of `count` values.
    val count: count: int -> Aggregator<'a, 'a list>

    /// Batches whose total size reaches `maxBytes`.
    val bytes: size: ('a -> int64) -> maxBytes: int64 -> Aggregator<'a, 'a list>

    /// Batches of whatever arrived within `maxAge` of the batch's first value.
    val age: maxAge: TimeSpan -> Aggregator<'a, 'a list>
