// The pure interpreter of a pipe: it pushes one event through the nodes and returns the new state
// with the effects to apply. Inside a push it works on copies of the state arrays it touches.
namespace KFlow

open System
open System.Threading.Tasks

[<NoEquality; NoComparison>]
type SinkRequest = {
    Sink: string
    Envelope: Envelope<obj>
    Write: obj -> Task
}

[<NoEquality; NoComparison>]
type StageFailure = {
    Stage: string
    Position: Position voption
    Error: exn
}

[<NoEquality; NoComparison>]
type Effects = {
    Outputs: Envelope<obj> list
    Ledger: LedgerEffect list
    Sinks: SinkRequest list
    Failures: StageFailure list
}

[<NoEquality; NoComparison>]
type internal NodeState =
    | Stateless
    | StageState of obj
    | DemuxState of Map<string, Substream>

and [<NoEquality; NoComparison>] internal Substream = {
    Nodes: Node[]
    States: NodeState[]
    LastActive: DateTimeOffset
}

[<Sealed; NoEquality; NoComparison>]
type PipeRun internal (nodes: Node[], states: NodeState[]) =
    member internal _.Nodes = nodes
    member internal _.States = states

/// What one push collects, in order.
type internal Collected() =
    member val Outputs = ResizeArray<Envelope<obj>>()
    member val Ledger = ResizeArray<LedgerEffect>()
    member val Sinks = ResizeArray<SinkRequest>()
    member val Failures = ResizeArray<StageFailure>()

[<RequireQualifiedAccess>]
module PipeRun =
    let private initial (node: Node) =
        match node with
        | StageNode s -> StageState s.Init
        | DemuxNode _ -> DemuxState Map.empty
        | AsyncMapNode _
        | SinkNode _ -> Stateless

    let private ofNodes (nodes: Node list) =
        let nodes = Array.ofList nodes
        nodes, Array.map initial nodes

    let start (pipe: Pipe<'i, 'o>) = PipeRun(ofNodes (Pipe.nodes pipe))

    let private failed (acc: Collected) stage position error =
        acc.Failures.Add {
            Stage = stage
            Position = position
            Error = error
        }

    /// Steps stage i with an event; returns what it emitted (None if it threw).
    let private stepStage
        now
        (acc: Collected)
        (stage: Stage<obj, obj>)
        (states: NodeState[])
        i
        event
        position
        =
        match states[i] with
        | StageState state ->
            match
                (try
                    Ok(stage.Step now event state)
                 with ex ->
                     Error ex)
            with
            | Ok(state', output) ->
                states[i] <- StageState state'
                acc.Ledger.AddRange output.Effects
                output.Emitted
            | Error ex ->
                failed acc (Stage.name stage) position ex
                []
        | _ -> []

    let private substream (demux: Demux) key now =
        let nodes =
            match demux.Route with
            | Same sub -> sub
            | PerKey route -> route key

        let nodes, states = ofNodes nodes

        {
            Nodes = nodes
            States = states
            LastActive = now
        }

    /// Pushes one envelope into node i of a level; `k` receives what passes the level's end.
    let rec private pushAt
        now
        (acc: Collected)
        (nodes: Node[])
        (states: NodeState[])
        i
        (env: Envelope<obj>)
        k
        =
        if i >= nodes.Length then
            k env
        else
            match nodes[i] with
            | StageNode stage ->
                for e in stepStage now acc stage states i (Message env) (ValueSome env.Position) do
                    pushAt now acc nodes states (i + 1) e k
            | SinkNode(name, write) ->
                acc.Sinks.Add {
                    Sink = name
                    Envelope = env
                    Write = write
                }
            | AsyncMapNode(name, _, run) ->
                match
                    (try
                        Ok((run env.Value).GetAwaiter().GetResult())
                     with ex ->
                         Error ex)
                with
                | Ok value -> pushAt now acc nodes states (i + 1) (Envelope.withValue value env) k
                | Error ex -> failed acc name (ValueSome env.Position) ex
            | DemuxNode demux ->
                match
                    (try
                        Ok(demux.Key env)
                     with ex ->
                         Error ex)
                with
                | Error ex -> failed acc "demux key" (ValueSome env.Position) ex
                | Ok key ->
                    let subs =
                        match states[i] with
                        | DemuxState subs -> subs
                        | _ -> Map.empty

                    let sub =
                        match Map.tryFind key subs with
                        | Some sub -> sub
                        | None -> substream demux key now

                    let subStates = Array.copy sub.States

                    pushAt now acc sub.Nodes subStates 0 env (fun out ->
                        pushAt now acc nodes states (i + 1) out k)

                    let sub' = {
                        sub with
                            States = subStates
                            LastActive = now
                    }

                    match states[i] with
                    | DemuxState subs -> states[i] <- DemuxState(Map.add key sub' subs)
                    | _ -> ()

    /// Sends a non-message event to every stage of a level, in order.
    let rec private broadcastAt
        now
        (acc: Collected)
        (nodes: Node[])
        (states: NodeState[])
        (event: Event<obj>)
        k
        =
        for i in 0 .. nodes.Length - 1 do
            let after out =
                pushAt now acc nodes states (i + 1) out k

            match nodes[i], states[i] with
            | StageNode stage, _ ->
                for e in stepStage now acc stage states i event ValueNone do
                    after e
            | DemuxNode demux, DemuxState subs ->
                let mutable subs' = subs

                for KeyValue(key, sub) in subs do
                    let subStates = Array.copy sub.States
                    broadcastAt now acc sub.Nodes subStates event after
                    subs' <- Map.add key { sub with States = subStates } subs'

                let drop (sub: Substream) =
                    match event with
                    | Flush -> true
                    | Tick -> now - sub.LastActive >= demux.Options.IdleAfter
                    | _ -> false

                for KeyValue(key, sub) in subs' do
                    if drop sub then
                        if
                            (match event with
                             | Tick -> true
                             | _ -> false)
                        then
                            broadcastAt now acc sub.Nodes (Array.copy sub.States) Flush after

                        subs' <- Map.remove key subs'

                states[i] <- DemuxState subs'
            | _ -> ()

    let push (now: DateTimeOffset) (event: Event<obj>) (run: PipeRun) =
        let acc = Collected()
        let states = Array.copy run.States

        match event with
        | Message env -> pushAt now acc run.Nodes states 0 env acc.Outputs.Add
        | _ -> broadcastAt now acc run.Nodes states event acc.Outputs.Add

        let effects = {
            Outputs = List.ofSeq acc.Outputs
            Ledger = List.ofSeq acc.Ledger
            Sinks = List.ofSeq acc.Sinks
            Failures = List.ofSeq acc.Failures
        }

        PipeRun(run.Nodes, states), effects

    let rec private count (states: NodeState[]) =
        states
        |> Array.sumBy (function
            | DemuxState subs -> subs.Count + (subs |> Seq.sumBy (fun (KeyValue(_, s)) -> count s.States))
            | _ -> 0)

    let liveSubstreams (run: PipeRun) = count run.States
