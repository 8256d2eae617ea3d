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

type internal UntypedStep = DateTimeOffset -> Event<obj> -> obj -> obj * Output<obj>

[<Sealed; NoEquality; NoComparison>]
type Stage<'a, 'b> internal (name: string, init: obj, step: UntypedStep) =
    member internal _.Name = name
    member internal _.Init = init
    member internal _.Step = step

[<Sealed; NoEquality; NoComparison>]
type StageInstance<'a, 'b> internal (stage: Stage<'a, 'b>, state: obj) =
    member internal _.Stage = stage
    member internal _.State = state

[<RequireQualifiedAccess>]
module Stage =
    let create (name: string) (init: 's) (step: DateTimeOffset -> Event<'a> -> 's -> 's * Output<'b>) =
        if String.IsNullOrWhiteSpace name then
            invalidArgWith
                "name"
                "A stage needs a non-empty name; it names the stage in failures and descriptions."

        let untyped (now: DateTimeOffset) (event: Event<obj>) (state: obj) =
            let state', output = step now (Event.map unbox<'a> event) (unbox<'s> state)
            box state', Output.map box output

        Stage<'a, 'b>(name, box init, untyped)

    let name (stage: Stage<'a, 'b>) = stage.Name

    /// A stage with no state that reacts to messages only.
    let private stateless name (onMessage: Envelope<'a> -> Output<'b>) =
        create name () (fun _ event () ->
            match event with
            | Message e -> (), onMessage e
            | _ -> (), Output.none)

    let map (f: 'a -> 'b) =
        stateless "map" (fun e -> Output.emit (Envelope.map f e))

    let mapEnvelope (f: Envelope<'a> -> 'b) =
        stateless "map" (fun e -> Output.emit (Envelope.withValue (f e) e))

    let filter (predicate: 'a -> bool) =
        stateless "filter" (fun e -> if predicate e.Value then Output.emit e else Output.drop e)

    let unfold (f: 'a -> 'b list) =
        stateless "unfold" (fun e -> Output.split (f e.Value) e)

    let mapFilterKey (f: 'a -> (string * 'b) option) =
        stateless "mfd" (fun e ->
            match f e.Value with
            | None -> Output.drop e
            | Some(key, v) ->
                Output.emit {
                    Envelope.withValue v e with
                        Key = key
                })

    let start (stage: Stage<'a, 'b>) =
        StageInstance<'a, 'b>(stage, stage.Init)

    let step (now: DateTimeOffset) (event: Event<'a>) (instance: StageInstance<'a, 'b>) =
        let state', output = instance.Stage.Step now (Event.map box event) instance.State
        StageInstance<'a, 'b>(instance.Stage, state'), Output.map unbox<'b> output

    let boxed (stage: Stage<'a, 'b>) =
        Stage<obj, obj>(stage.Name, stage.Init, stage.Step)

    let internal timed (enabled: unit -> bool) (record: string -> int64 -> unit) (stage: Stage<obj, obj>) =
        let name = stage.Name
        let inner = stage.Step

        let step now (event: Event<obj>) state =
            match event with
            | Message _ when enabled () ->
                let started = Diagnostics.Stopwatch.GetTimestamp()
                let result = inner now event state
                record name started
                result
            | _ -> inner now event state

        Stage<obj, obj>(name, stage.Init, step)
