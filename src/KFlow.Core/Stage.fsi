// A stage: one pure state machine of a pipe, (state, event) -> (state, emitted envelopes, ledger
// effects). The built-in stateless stages (map, filter, unfold) live here too.
namespace KFlow

open System

/// What a stage reacts to.
type Event<'a> =
    /// A message (or an upstream stage's output) arrives.
    | Message of Envelope<'a>
    /// The clock ticked; the time is the step's `now`. Age-based stages (buffers, idle substreams) act on it.
    | Tick
    /// Shutdown: emit everything buffered; nothing more will arrive.
    | Flush
    /// The partition was taken away: emit what is buffered (its tokens may be stale afterwards).
    | Revoked of TopicPartition
    /// The partition was (re)assigned to this instance.
    | Assigned of TopicPartition

/// Functions over Event.
[<RequireQualifiedAccess>]
module Event =
    /// Maps the envelope of a Message event; other events are unchanged.
    val map: f: ('a -> 'b) -> event: Event<'a> -> Event<'b>

/// What a stage asks of the offset ledger.
type LedgerEffect =
    /// One part of the token is finished (the input was dropped, or its output fully processed).
    | Complete of Token
    /// One part of the token became `parts` parts (one input produced that many outputs). Zero completes.
    | Fork of token: Token * parts: int

/// What one step of a stage produces, in order.
type Output<'b> = {
    /// Envelopes passed downstream, in order.
    Emitted: Envelope<'b> list
    /// Ledger effects, applied in order before any emitted envelope finishes.
    Effects: LedgerEffect list
}

/// Functions building outputs.
[<RequireQualifiedAccess>]
module Output =
    /// Nothing emitted, no effect.
    val none<'b> : Output<'b>
    /// Emits one envelope.
    val emit: envelope: Envelope<'b> -> Output<'b>
    /// Emits envelopes in order.
    val emitAll: envelopes: Envelope<'b> list -> Output<'b>
    /// Drops an envelope: completes one part of each of its tokens.
    val drop: envelope: Envelope<'a> -> Output<'b>
    /// <summary>Emits <paramref name="values"/> in place of one envelope: zero values complete its tokens,
    /// one keeps them, n forks each of them into n parts (one per output).</summary>
    val split: values: 'b list -> envelope: Envelope<'a> -> Output<'b>
    /// Both outputs, the first one's envelopes and effects first.
    val append: first: Output<'b> -> second: Output<'b> -> Output<'b>
    /// Maps the emitted values.
    val map: f: ('b -> 'c) -> output: Output<'b> -> Output<'c>

/// <summary>A pure state machine: an initial state (hidden) and a step
/// <c>now -> event -> state -> state * output</c>.</summary>
/// <remarks>A stage never does I/O. Its step must not mutate its state: the test driver keeps old
/// states to replay and crash. A step that throws leaves its input unfinished (its offset stays open).</remarks>
/// A stage's untyped step (state and values boxed): a delegate with a struct result, so that a step
/// allocates no closure or tuple of its own (bench --only pipe-core).
type internal UntypedStep = delegate of DateTimeOffset * Event<obj> * obj -> struct (obj * Output<obj>)

/// The message step of a stateless one-in, at-most-one-out stage (map, mapEnvelope, filter,
/// mapFilterKey): the envelope it emits, or ValueNone to drop its input (completing its tokens).
/// PipeRun calls it on messages instead of the step: no Output, list or state is built.
type internal PassStep = delegate of Envelope<obj> -> Envelope<obj> voption

/// The message step of a stateful stage that has one apart (the aggregate): Step on a Message of the
/// envelope, without building the Message event (bench --only pipe-core (c)).
type internal MessageStep = delegate of DateTimeOffset * Envelope<obj> * obj -> struct (obj * Output<obj>)

[<Sealed; NoEquality; NoComparison>]
type Stage<'a, 'b> =
    internal new: name: string * init: obj * step: UntypedStep * pass: PassStep voption -> Stage<'a, 'b>

    internal new:
        name: string * init: obj * step: UntypedStep * pass: PassStep voption * onMessage: MessageStep voption ->
            Stage<'a, 'b>

    member internal Name: string
    member internal Init: obj
    member internal Step: UntypedStep
    /// The message step of a stateless one-in, at-most-one-out stage; ValueNone for other stages. It
    /// agrees with Step on messages (Step emits its envelope, or drops its input).
    member internal Pass: PassStep voption
    /// The message step of a stateful stage, when it has one apart; ValueNone for other stages. It
    /// agrees with Step on messages.
    member internal OnMessage: MessageStep voption

/// A stage together with its current state, to step it by hand (e.g. to unit-test a user stage).
[<Sealed; NoEquality; NoComparison>]
type StageInstance<'a, 'b> =
    member internal State: obj

/// Building and running stages.
[<RequireQualifiedAccess>]
module Stage =
    /// <summary>A user-defined stateful stage (KFlow's kflow_gen): a name, an initial state and a step.
    /// The step sees every event; it emits envelopes (built from its inputs so they carry tokens,
    /// e.g. with <c>Envelope.map</c>, <c>Envelope.merge</c>) and must finish every token it takes in:
    /// by emitting it, by <c>Output.drop</c>, or by keeping it in its state until a later step.</summary>
    val create:
        name: string ->
        init: 's ->
        step: (DateTimeOffset -> Event<'a> -> 's -> 's * Output<'b>) ->
            Stage<'a, 'b>

    /// The stage's name (shown in descriptions and failures).
    val name: stage: Stage<'a, 'b> -> string

    /// One in, one out, tokens kept.
    val map: f: ('a -> 'b) -> Stage<'a, 'b>

    /// One in, one out; the function sees the whole envelope (offset, key, timestamp, value).
    val mapEnvelope: f: (Envelope<'a> -> 'b) -> Stage<'a, 'b>

    /// Keeps the values satisfying the predicate; a dropped value's tokens complete.
    val filter: predicate: ('a -> bool) -> Stage<'a, 'a>

    /// One in, zero or more out: zero completes the tokens, n forks them into n parts.
    val unfold: f: ('a -> 'b list) -> Stage<'a, 'b>

    /// Map + filter + key in one step (the first half of mfd): None drops (completes), Some (key, value)
    /// emits the value with its envelope's Key set.
    val mapFilterKey: f: ('a -> (string * 'b) option) -> Stage<'a, 'b>

    /// The stage with its initial state.
    val start: stage: Stage<'a, 'b> -> StageInstance<'a, 'b>

    /// Steps a running stage with one event at time `now`.
    val step:
        now: DateTimeOffset ->
        event: Event<'a> ->
        instance: StageInstance<'a, 'b> ->
            StageInstance<'a, 'b> * Output<'b>

    /// The untyped view of a stage, as pipes store it.
    val boxed: stage: Stage<'a, 'b> -> Stage<obj, obj>

    /// <summary>The stage with its Message steps timed for the runtime's latency metric: when
    /// <paramref name="enabled"/> () is true, <paramref name="record"/> receives the stage's name and
    /// the Stopwatch timestamp taken before the step, after it. Other events are not timed.</summary>
    val internal timed:
        enabled: (unit -> bool) ->
        record: (string -> int64 -> unit) ->
        stage: Stage<obj, obj> ->
            Stage<obj, obj>
