// A stage: one pure state machine of a pipe. The state type is hidden: a stage stores its initial
// state and step untyped (obj), so stages of any state type compose into one walkable pipe.
namespace KFlow

open System

type Event<'a> =
    | Message of Envelope<'a>
    | Tick
    | Flush
    | Revoked of TopicPartition
    | Assigned of TopicPartition

[<RequireQualifiedAccess>]
module Event =
    let map (f: 'a -> 'b) (event: Event<'a>) : Event<'b> =
        match event with
        | Message e -> Message(Envelope.map f e)
        | Tick -> Tick
        | Flush -> Flush
        | Revoked tp -> Revoked tp
        | Assigned tp -> Assigned tp

type LedgerEffect =
    | Complete of Token
    | Fork of token: Token * parts: int

type Output<'b> = {
    Emitted: Envelope<'b> list
    Effects: LedgerEffect list
}

[<RequireQualifiedAccess>]
module Output =
    let none<'b> : Output<'b> = { Emitted = []; Effects = [] }
    let emit (envelope: Envelope<'b>) = { Emitted = [ envelope ]; Effects = [] }
    let emitAll (envelopes: Envelope<'b> list) = { Emitted = envelopes; Effects = [] }

    let drop (envelope: Envelope<'a>) : Output<'b> = {
        Emitted = []
        Effects = envelope.Tokens |> List.map Complete
    }

    let split (values: 'b list) (envelope: Envelope<'a>) : Output<'b> =
        match values with
        | [] -> drop envelope
        | [ v ] -> emit (Envelope.withValue v envelope)
        | vs ->
            let n = List.length vs

            {
                Emitted = vs |> List.map (fun v -> Envelope.withValue v envelope)
                Effects = envelope.Tokens |> List.map (fun t -> Fork(t, n))
            }

    let append (first: Output<'b>) (second: Output<'b>) =
        match first, second with
        | { Emitted = []; Effects = [] }, o
        | o, { Emitted = []; Effects = [] } -> o
        | _ -> {
            Emitted = first.Emitted @ second.Emitted
            Effects = first.Effects @ second.Effects
          }

    let map (f: 'b -> 'c) (output: Output<'b>) = {
        Emitted = output.Emitted |> List.map (Envelope.map f)
        Effects = output.Effects
    }

type internal UntypedStep = delegate of DateTimeOffset * Event<obj> * obj -> struct (obj * Output<obj>)

type internal PassStep = delegate of Envelope<obj> -> Envelope<obj> voption

type internal MessageStep = delegate of DateTimeOffset * Envelope<obj> * obj -> struct (obj * Output<obj>)

[<Sealed; NoEquality; NoComparison>]
type Stage<'a, 'b>
    internal
    (name: string, init: obj, step: UntypedStep, pass: PassStep voption, onMessage: MessageStep voption) =
    internal new(name, init, step, pass) = Stage<'a, 'b>(name, init, step, pass, ValueNone)
    member internal _.Name = name
    member internal _.Init = init
    member internal _.Step = step
    member internal _.Pass = pass
    member internal _.OnMessage = onMessage

[<Sealed; NoEquality; NoComparison>]
type StageInstance<'a, 'b> internal (stage: Stage<'a, 'b>, state: obj) =
    member internal _.Stage = stage
    member internal _.State = state

[<RequireQualifiedAccess>]
module Stage =
    let private checkName (name: string) =
        if String.IsNullOrWhiteSpace name then
            invalidArgWith
                "name"
                "A stage needs a non-empty name; it names the stage in failures and descriptions."

    let create (name: string) (init: 's) (step: DateTimeOffset -> Event<'a> -> 's -> 's * Output<'b>) =
        checkName name

        let untyped =
            UntypedStep(fun now event state ->
                let state', output = step now (Event.map unbox<'a> event) (unbox<'s> state)
                struct (box state', Output.map box output))

        Stage<'a, 'b>(name, box init, untyped, ValueNone)

    let name (stage: Stage<'a, 'b>) = stage.Name

    /// <summary>A stateless stage that emits at most one envelope per message, from its message step
    /// <paramref name="pass"/> (ValueNone drops the input): the step PipeRun takes on messages, with a
    /// full Step built from it for every other use.</summary>
    let private passing name (pass: Envelope<obj> -> Envelope<obj> voption) : Stage<'a, 'b> =
        let step =
            UntypedStep(fun _ event state ->
                match event with
                | Message e ->
                    match pass e with
                    | ValueSome out -> struct (state, Output.emit out)
                    | ValueNone -> struct (state, Output.drop e)
                | _ -> struct (state, Output.none))

        Stage<'a, 'b>(name, box (), step, ValueSome(PassStep pass))

    /// The envelope with another (boxed) value, same tokens, key, position and timestamp.
    let inline private carrying (value: 'b) (e: Envelope<obj>) : Envelope<obj> = {
        Value = box value
        Tokens = e.Tokens
        Key = e.Key
        Position = e.Position
        Timestamp = e.Timestamp
    }

    let map (f: 'a -> 'b) : Stage<'a, 'b> =
        passing "map" (fun e -> ValueSome(carrying (f (unbox<'a> e.Value)) e))

    let mapEnvelope (f: Envelope<'a> -> 'b) : Stage<'a, 'b> =
        passing "map" (fun e -> ValueSome(carrying (f (Envelope.unbox<'a> e)) e))

    let filter (predicate: 'a -> bool) : Stage<'a, 'a> =
        passing "filter" (fun e ->
            if predicate (unbox<'a> e.Value) then
                ValueSome e
            else
                ValueNone)

    /// A stage with no state that reacts to messages only.
    let private stateless name (onMessage: Envelope<'a> -> Output<'b>) =
        create name () (fun _ event () ->
            match event with
            | Message e -> (), onMessage e
            | _ -> (), Output.none)

    let unfold (f: 'a -> 'b list) =
        stateless "unfold" (fun e -> Output.split (f e.Value) e)

    let mapFilterKey (f: 'a -> (string * 'b) option) : Stage<'a, 'b> =
        passing "mfd" (fun e ->
            match f (unbox<'a> e.Value) with
            | None -> ValueNone
            | Some(key, v) -> ValueSome { carrying v e with Key = key })

    let start (stage: Stage<'a, 'b>) =
        StageInstance<'a, 'b>(stage, stage.Init)

    let step (now: DateTimeOffset) (event: Event<'a>) (instance: StageInstance<'a, 'b>) =
        let struct (state', output) =
            instance.Stage.Step.Invoke(now, Event.map box event, instance.State)

        StageInstance<'a, 'b>(instance.Stage, state'), Output.map unbox<'b> output

    let boxed (stage: Stage<'a, 'b>) =
        Stage<obj, obj>(stage.Name, stage.Init, stage.Step, stage.Pass, stage.OnMessage)

    let internal timed (enabled: unit -> bool) (record: string -> int64 -> unit) (stage: Stage<obj, obj>) =
        let name = stage.Name
        let inner = stage.Step

        let step =
            UntypedStep(fun now event state ->
                match event with
                | Message _ when enabled () ->
                    let started = Diagnostics.Stopwatch.GetTimestamp()
                    let result = inner.Invoke(now, event, state)
                    record name started
                    result
                | _ -> inner.Invoke(now, event, state))

        let pass =
            stage.Pass
            |> ValueOption.map (fun inner ->
                PassStep(fun e ->
                    if enabled () then
                        let started = Diagnostics.Stopwatch.GetTimestamp()
                        let result = inner.Invoke e
                        record name started
                        result
                    else
                        inner.Invoke e))

        let onMessage =
            stage.OnMessage
            |> ValueOption.map (fun inner ->
                MessageStep(fun now e state ->
                    if enabled () then
                        let started = Diagnostics.Stopwatch.GetTimestamp()
                        let result = inner.Invoke(now, e, state)
                        record name started
                        result
                    else
                        inner.Invoke(now, e, state)))

        Stage<obj, obj>(name, stage.Init, step, pass, onMessage)
