// The pure interpreter of a pipe: it pushes one event through the nodes and returns the new state
// with the effects to apply. The test driver and the Kafka runtime share it, so they agree.
namespace KFlow

open System
open System.Threading.Tasks

/// <summary>A running pipe: the state of every stage and substream. A value: pushing into a run returns
/// a new one, and an older run stays valid (pushing into it again gives what a fresh run given the same
/// events would), from any thread.</summary>
/// <remarks>The versions of one run share a mutable store owned by the newest; an older version holds
/// the writes that lead back to it, applied (under the store's lock) when it is used again: O(1) per
/// write in the usual linear use, O(writes since) for going back; an older run kept alive keeps those
/// writes alive too.</remarks>
[<Sealed; NoEquality; NoComparison>]
type PipeRun

/// Running pipes.
[<RequireQualifiedAccess>]
module PipeRun =
    /// The pipe with every stage in its initial state and no substream; async maps run inline.
    val start: pipe: Pipe<'i, 'o> -> PipeRun

    /// The pipe in its initial state, running async maps as given.
    val startWith: mode: AsyncMode -> pipe: Pipe<'i, 'o> -> PipeRun

    /// <summary>Pushes one event at time <paramref name="now"/>.</summary>
    /// <remarks>
    /// 1. A Message goes through the nodes in order, depth first: each emitted envelope reaches the
    ///    end (or a sink) before the next one is pushed.
    /// 2. Tick, Flush, Revoked and Assigned go to every stage in order (into every substream of a
    ///    demux); what a stage emits is pushed as messages through the nodes after it before the
    ///    next stage receives the event.
    /// 3. On Tick, a demux then flushes and drops its substreams idle for IdleAfter or more; on Flush it
    ///    drops all of them after flushing them. A substream with async calls in flight (or an event
    ///    held, see 5) is kept, to be dropped at a later tick once idle or by a later flush.
    /// 4. Async maps run inline (RunInline: the calling thread waits) or become requests (Defer).
    /// 5. Defer: a Flush or Revoked waits at an async node for the calls it concerns (every call in
    ///    flight or waiting there for Flush; those holding a token of the partition for Revoked). The
    ///    nodes after it receive it only on the resume that passes on the last of those results, right
    ///    after them, so one Flush writes everything once the calls answer. A demux passes it on once
    ///    no substream holds it. An Assigned waits behind an event held before it (events keep their
    ///    order); a Tick is never held. A failed call counts as answered: the held event goes on, and
    ///    the failed input stays unfinished (its offset open) until a restart replays it. See held.
    /// </remarks>
    val push: now: DateTimeOffset -> event: Event<obj> -> run: PipeRun -> PipeRun * Effects

    /// <summary>Hands back the result of a deferred async call: results at the head of the node's
    /// calls (input order) go on through the rest of the pipe, each followed by the events held behind
    /// it, and waiting inputs start in the freed slots. An Error result is reported as a
    /// StageFailure; its input stays unfinished, and the events held behind it go on.
    /// ArgumentException if the call is not in flight in this run.</summary>
    val resume:
        now: DateTimeOffset -> callId: int -> result: Result<obj, exn> -> run: PipeRun -> PipeRun * Effects

    /// How many demux substreams are alive (over every demux, nested ones included).
    val liveSubstreams: run: PipeRun -> int

    /// <summary>The Flush, Revoked and Assigned events held at async nodes (Defer), waiting for calls
    /// in flight: each push (or flush of an idle substream being dropped) once, oldest first. Empty
    /// when every such event has reached the end of the pipe.</summary>
    /// <remarks>A runtime shutting down pushes Flush, runs the calls in flight until <c>held</c> no
    /// longer contains it, then commits; on a revoke it does the same with <c>Revoked tp</c> (for a
    /// bounded time). It should not deliver messages of a partition assigned again while the
    /// partition's Revoked is still held: across demux substreams they could reach later stages
    /// before it.</remarks>
    val held: run: PipeRun -> Event<obj> list

    /// <summary>The pipe in its initial state as an owned run, running async maps as given: one caller
    /// owns it and pushes it in place with pushOwned / resumeOwned, one call at a time (the Kafka
    /// runtime's partition loop, which never goes back to an older run).</summary>
    /// <remarks>push and resume refuse it (InvalidOperationException); liveSubstreams and held read it.
    /// Nothing is recorded per write, so a push or resume that throws half-way (a bug: user code's
    /// throws are reported as StageFailures) cannot be undone: the run is then broken, and every
    /// later use raises InvalidOperationException.</remarks>
    val internal startOwnedWith: mode: AsyncMode -> pipe: Pipe<'i, 'o> -> PipeRun

    /// An owned run (see startOwnedWith) running async maps inline.
    val internal startOwned: pipe: Pipe<'i, 'o> -> PipeRun

    /// <summary>Pushes one event into an owned run, in place, as push does into a value run: the same
    /// effects, in the same order. InvalidOperationException for a value run or a broken one.</summary>
    val internal pushOwned: now: DateTimeOffset -> event: Event<obj> -> run: PipeRun -> Effects

    /// pushOwned of the message carrying `env`, without building the Message event.
    val internal pushMessageOwned: now: DateTimeOffset -> env: Envelope<obj> -> run: PipeRun -> Effects

    /// <summary>Hands back the result of a deferred call of an owned run, in place, as resume does for a
    /// value run. ArgumentException if the call is not in flight (the run stays usable);
    /// InvalidOperationException for a value run or a broken one.</summary>
    val internal resumeOwned:
        now: DateTimeOffset -> callId: int -> result: Result<obj, exn> -> run: PipeRun -> Effects
