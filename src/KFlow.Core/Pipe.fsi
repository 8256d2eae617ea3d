// A pipe: stages composed into a plain, walkable value (a list of nodes, demux nodes holding their
// sub-pipes), built once and interpreted by the test driver or by the Kafka runtime.
namespace KFlow

open System
open System.Threading.Tasks

/// What flows out of a sink: nothing. A pipe ending in a sink has output type Sunk.
[<Sealed>]
type Sunk

/// The settings of a demux.
type DemuxOptions = {
    /// A substream that received no message for this long is flushed and dropped at the next
    /// tick, so memory is bounded by the live substreams, not the keys ever seen. Default 60 s.
    IdleAfter: TimeSpan
}

/// <summary>One node of a pipe, untyped (values are boxed): the view interpreters walk.</summary>
[<NoEquality; NoComparison>]
type Node =
    /// A pure stage.
    | StageNode of Stage<obj, obj>
    /// Substreams by key, each running its own copy of a sub-pipe, merged back (joined) after it.
    | DemuxNode of Demux
    /// A described asynchronous map: the interpreter runs `run` with at most `parallelism` calls in flight,
    /// passing results on in input order.
    | AsyncMapNode of name: string * parallelism: int * run: (obj -> Task<obj>)
    /// A described sink effect: the interpreter runs `write` on each arriving value (usually a batch);
    /// the envelope's tokens complete when it succeeds, none when it fails. `pipelining` says how many
    /// writes of one substream may run at once (SinkPipelining.sequential: one).
    | SinkNode of name: string * write: (obj -> Task) * pipelining: SinkPipelining
    /// A sink in exactly-once mode: `write` receives the source positions of the value's tokens with
    /// the value, and records them in `store` in the same transaction as its effect.
    | ExactlyOnceSinkNode of
        name: string *
        store: AppliedOffsetStore *
        write: (Position list -> obj -> Task) *
        pipelining: SinkPipelining

/// A demux node.
and [<NoEquality; NoComparison>] Demux = {
    /// The substream key of an envelope.
    Key: Envelope<obj> -> string
    /// The demux's settings.
    Options: DemuxOptions
    /// The sub-pipe of each substream.
    Route: Route
}

/// Which sub-pipe a substream runs.
and [<NoEquality; NoComparison>] Route =
    /// Every substream runs the same sub-pipe.
    | Same of Node list
    /// Each substream key gets its own sub-pipe (routeDependent), built on the key's first message.
    | PerKey of (string -> Node list)

/// <summary>A pipe from input values <c>'i</c> to output values <c>'o</c>: an immutable list of nodes.</summary>
/// <remarks>Envelopes that reach the end of a pipe (not ending in a sink) are its outputs; they are
/// finished there, so their tokens complete.</remarks>
[<Sealed; NoEquality; NoComparison>]
type Pipe<'i, 'o>

/// Composing pipes; read them top-down with `|>`.
[<RequireQualifiedAccess>]
module Pipe =
    /// The empty pipe: values pass through unchanged.
    val source<'a> : Pipe<'a, 'a>

    /// Appends a stage.
    val via: stage: Stage<'a, 'b> -> pipe: Pipe<'i, 'a> -> Pipe<'i, 'b>

    /// One in, one out, tokens kept.
    val map: f: ('a -> 'b) -> pipe: Pipe<'i, 'a> -> Pipe<'i, 'b>

    /// One in, one out; the function sees the envelope (offset, key, timestamp, value).
    val mapEnvelope: f: (Envelope<'a> -> 'b) -> pipe: Pipe<'i, 'a> -> Pipe<'i, 'b>

    /// Keeps the values satisfying the predicate; dropping completes the tokens.
    val filter: predicate: ('a -> bool) -> pipe: Pipe<'i, 'a> -> Pipe<'i, 'a>

    /// One in, zero or more out: zero completes, n forks the tokens (the offset completes when all n do).
    val unfold: f: ('a -> 'b list) -> pipe: Pipe<'i, 'a> -> Pipe<'i, 'b>

    /// A user-defined stateful stage (see Stage.create).
    val stateful:
        name: string ->
        init: 's ->
        step: (DateTimeOffset -> Event<'a> -> 's -> 's * Output<'b>) ->
        pipe: Pipe<'i, 'a> ->
            Pipe<'i, 'b>

    /// An aggregation (see Aggregator and Buffer); flushed on revoke and on shutdown.
    val aggregate: aggregator: Aggregator<'a, 'b> -> pipe: Pipe<'i, 'a> -> Pipe<'i, 'b>

    /// Assembles objects split across messages (see Chunks.assemble).
    val assembleChunks:
        chunkOf: ('a -> Chunk<'p>) -> combine: ('p list -> 'b) -> pipe: Pipe<'i, 'a> -> Pipe<'i, 'b>

    /// <summary>Splits the stream by key into substreams, each running its own copy of <paramref name="sub"/>
    /// (given Pipe.source) with per-key order kept; their outputs are merged back (joined) after it.
    /// Idle substreams are dropped after DemuxOptions.IdleAfter (default 60 s).</summary>
    val demux:
        key: ('a -> string) -> sub: (Pipe<'a, 'a> -> Pipe<'a, 'b>) -> pipe: Pipe<'i, 'a> -> Pipe<'i, 'b>

    /// <summary>Opens a demux without a sub-pipe function (KFlow's style): the stages appended after it
    /// run per substream until the matching <c>join</c> (or the end of the pipe). <c>demux key sub</c>
    /// is <c>split key >> sub >> join</c>. Idle substreams are dropped after 60 s.</summary>
    val split: key: ('a -> string) -> pipe: Pipe<'i, 'a> -> Pipe<'i, 'a>

    /// <summary>Opens a demux by the envelope's Key (the Kafka message key, or the key an earlier
    /// <c>mfd</c> set), KFlow's style: the stages appended after it run per key until the matching
    /// <c>join</c> (or the end of the pipe). <c>demuxByKey sub</c> is <c>splitByKey >> sub >> join</c>.</summary>
    val splitByKey: pipe: Pipe<'i, 'a> -> Pipe<'i, 'a>

    /// <summary>routeDependent in the split style, for the C# face (PipeCore.RouteDependent): on a
    /// key's first message, <c>route key empty</c> appends that key's stages to an empty pipe (typed
    /// as continuing this one) and its nodes become the key's sub-pipe; the substreams are joined
    /// after it. ArgumentException (when the key's first message arrives) if the route leaves a split
    /// open.</summary>
    val internal routeSplit:
        key: ('a -> string) ->
        route: (string -> Pipe<'i, 'a> -> Pipe<'i, 'b>) ->
        pipe: Pipe<'i, 'a> ->
            Pipe<'i, 'b>

    /// The pipe with every pure stage (inside demuxes too) timed by Stage.timed, for the runtime's
    /// stage latency metric.
    val internal timed:
        enabled: (unit -> bool) -> record: (string -> int64 -> unit) -> pipe: Pipe<'i, 'o> -> Pipe<'i, 'o>

    /// Closes the innermost open split: its substreams merge back into one stream here.
    /// ArgumentException when no split is open.
    val join: pipe: Pipe<'i, 'a> -> Pipe<'i, 'a>

    /// demux with explicit options.
    val demuxWith:
        options: DemuxOptions ->
        key: ('a -> string) ->
        sub: (Pipe<'a, 'a> -> Pipe<'a, 'b>) ->
        pipe: Pipe<'i, 'a> ->
            Pipe<'i, 'b>

    /// <summary>Splits the stream into substreams by the envelope's Key: the Kafka message key ("" when
    /// null) of the first input a value stands for, or the key an earlier <c>mfd</c> set. Each substream
    /// runs its own copy of <paramref name="sub"/> with per-key order kept; their outputs are merged back
    /// after it. Use it rather than <c>mapEnvelope (fun e -> e.Key, e.Value) |> demux fst</c>. Idle
    /// substreams are dropped after DemuxOptions.IdleAfter (default 60 s).</summary>
    val demuxByKey: sub: (Pipe<'a, 'a> -> Pipe<'a, 'b>) -> pipe: Pipe<'i, 'a> -> Pipe<'i, 'b>

    /// demuxByKey with explicit options.
    val demuxByKeyWith:
        options: DemuxOptions -> sub: (Pipe<'a, 'a> -> Pipe<'a, 'b>) -> pipe: Pipe<'i, 'a> -> Pipe<'i, 'b>

    /// <summary>Like demux, but each key gets its own sub-pipe: `route key source` is built on the key's
    /// first message.</summary>
    /// <remarks>A route may not hold an exactly-once sink (its message fails with
    /// InvalidOperationException when the route is built; see appliedOffsetStores): put it after the
    /// route.</remarks>
    val routeDependent:
        key: ('a -> string) ->
        route: (string -> Pipe<'a, 'a> -> Pipe<'a, 'b>) ->
        pipe: Pipe<'i, 'a> ->
            Pipe<'i, 'b>

    /// <summary>Map + filter + demux in one step: None drops the value (completes it), Some (key, value)
    /// sends the value to the substream of that key, which runs <paramref name="sub"/>.</summary>
    val mfd:
        f: ('a -> (string * 'b) option) ->
        sub: (Pipe<'b, 'b> -> Pipe<'b, 'c>) ->
        pipe: Pipe<'i, 'a> ->
            Pipe<'i, 'c>

    /// An asynchronous map with at most `parallelism` (≥ 1) calls in flight; results keep input order.
    val mapAsync: parallelism: int -> f: ('a -> Task<'b>) -> pipe: Pipe<'i, 'a> -> Pipe<'i, 'b>

    /// A sink named `name`: each arriving value (usually a batch from an aggregate) is written by
    /// `write`; its tokens complete when the write succeeds. Nothing flows past a sink.
    val sink: name: string -> write: ('a -> Task) -> pipe: Pipe<'i, 'a> -> Pipe<'i, Sunk>

    /// <summary>A sink named <paramref name="name"/> whose writes the runtime may pipeline as
    /// <paramref name="pipelining"/> allows: up to InFlight writes of one substream at once, the sink
    /// keeping the order per key itself (see SinkPipelining). <c>sink</c> is
    /// <c>sinkWith SinkPipelining.sequential</c>.</summary>
    val sinkWith:
        pipelining: SinkPipelining ->
        name: string ->
        write: ('a -> Task) ->
        pipe: Pipe<'i, 'a> ->
            Pipe<'i, Sunk>

    /// <summary>sinkExactlyOnce whose writes the runtime may pipeline as <paramref name="pipelining"/>
    /// allows (see sinkWith). <c>sinkExactlyOnce</c> is <c>sinkExactlyOnceWith
    /// SinkPipelining.sequential</c>.</summary>
    val sinkExactlyOnceWith:
        pipelining: SinkPipelining ->
        name: string ->
        store: AppliedOffsetStore ->
        write: (Position list -> 'a -> Task) ->
        pipe: Pipe<'i, 'a> ->
            Pipe<'i, Sunk>

    /// <summary>A sink in exactly-once mode named <paramref name="name"/>: each arriving value is written by
    /// <c>write positions value</c>, where positions are the source messages the value stands for (its
    /// tokens'); the write must apply the value's effect and record those positions in
    /// <paramref name="store"/> in one transaction. The runtime resumes past and skips recorded offsets
    /// (Workflow.run), so each message's effect is applied once even across crashes.</summary>
    /// <remarks>A message must reach the sink as one value: Workflow.run refuses a pipe with an unfold,
    /// and a stage that splits one message into several outputs fails the workflow. <c>write
    /// positions</c> is applied when the value reaches the sink (on the partition's loop, while the
    /// partition is assigned), and the function it returns is called for each try of the write: a
    /// write that must carry the partition's current claim (fencing) takes it in the first step.</remarks>
    val sinkExactlyOnce:
        name: string ->
        store: AppliedOffsetStore ->
        write: (Position list -> 'a -> Task) ->
        pipe: Pipe<'i, 'a> ->
            Pipe<'i, Sunk>

    /// <summary>The applied-offset stores of the pipe's exactly-once sinks, each once, in pipe order: at
    /// the top level and in every sub-pipe of demux, demuxByKey, mfd and split … join (any depth).</summary>
    /// <remarks>A routeDependent route is built per key at run time, so a sink in it cannot be listed:
    /// building a route that holds an exactly-once sink fails its message (InvalidOperationException
    /// saying to put the sink after the route).</remarks>
    val appliedOffsetStores: pipe: Pipe<'i, 'o> -> AppliedOffsetStore list

    /// The default demux options.
    val demuxOptions: DemuxOptions

    /// The pipe's nodes, in order.
    val nodes: pipe: Pipe<'i, 'o> -> Node list

    /// A readable outline of the pipe, one node per line, sub-pipes indented.
    val describe: pipe: Pipe<'i, 'o> -> string
