// What the interpreter of a pipe hands its caller: sink writes and async calls to run, ledger effects,
// outputs and failures. The test driver and the Kafka runtime apply them; PipeRun produces them.
namespace KFlow

open System
open System.Threading.Tasks

/// A described sink write: the interpreter's caller runs it and, on success, completes the tokens.
[<NoEquality; NoComparison>]
type SinkRequest = {
    /// The sink's name.
    Sink: string
    /// The value to write and the tokens it holds.
    Envelope: Envelope<obj>
    /// The write itself.
    Write: obj -> Task
    /// The demux substream the write comes from: its keys, outermost first, joined by U+001F
    /// ("" outside any demux). A runtime that runs writes concurrently keeps the writes of one
    /// substream in request order, so per-key order holds in the sink.
    Substream: string
    /// How many writes of the substream may run at once, and how the sink orders them
    /// (SinkPipelining.sequential: one at a time).
    Pipelining: SinkPipelining
}

/// A described asynchronous map call (AsyncMode.Defer): the caller runs it and hands the result back
/// with PipeRun.resume.
[<NoEquality; NoComparison>]
type AsyncRequest = {
    /// The call's number within the run, from 1.
    Id: int
    /// The async node's name.
    Stage: string
    /// The input value and the tokens it holds.
    Envelope: Envelope<obj>
    /// The call itself.
    Run: obj -> Task<obj>
}

/// How a run executes async maps.
type AsyncMode =
    /// The interpreter runs the task and waits for it during the push (the test driver's default).
    | RunInline
    /// The interpreter returns an AsyncRequest (at most `parallelism` in flight per async node
    /// instance, further inputs wait in order) and passes results on, in input order, on resume.
    | Defer

/// <summary>A stage (or key function, or async map) that threw: its input stays unfinished, so its
/// offsets stay open and the commit point stops before them until the pipe restarts and replays
/// them, or until the caller completes <c>Tokens</c> itself (a runtime does once it has
/// dead-lettered every message they stand for).</summary>
[<NoEquality; NoComparison>]
type StageFailure = {
    /// The stage's name.
    Stage: string
    /// The position of the input's first message, if the event was a message.
    Position: Position voption
    /// The tokens the failed input holds, one part each, in order (after an aggregate: every message
    /// of the batch); empty when the event was not a message (Tick, Flush, Revoked, Assigned).
    Tokens: Token list
    /// What was thrown.
    Error: exn
}

/// Functions over StageFailure.
[<RequireQualifiedAccess>]
module StageFailure =
    /// The distinct positions of the messages the failed input stands for, in token order (a batch
    /// from an aggregate: each of its messages once; parts forked by an unfold: their message once).
    val positions: failure: StageFailure -> Position list

/// What pushing one event produced, each list in order.
[<NoEquality; NoComparison>]
type Effects = {
    /// Envelopes that reached the end of the pipe: finished, their tokens are to be completed.
    Outputs: Envelope<obj> list
    /// Ledger effects, to apply in order before completing anything of this push.
    Ledger: LedgerEffect list
    /// Sink writes to run.
    Sinks: SinkRequest list
    /// Async calls to run (AsyncMode.Defer only).
    Calls: AsyncRequest list
    /// Stages that threw.
    Failures: StageFailure list
}
