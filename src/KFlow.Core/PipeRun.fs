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
    Substream: string
}

[<NoEquality; NoComparison>]
type AsyncRequest = {
    Id: int
    Stage: string
    Envelope: Envelope<obj>
    Run: obj -> Task<obj>
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
    Calls: AsyncRequest list
    Failures: StageFailure list
}

type AsyncMode =
    | RunInline
    | Defer

/// An async map's calls in input order (with their result once known), and inputs waiting for a slot.
[<NoEquality; NoComparison>]
type internal AsyncSlots = {
    InFlight: (int * Envelope<obj> * Result<obj, exn> option) list
    Waiting: Envelope<obj> list
}

[<NoEquality; NoComparison>]
type internal NodeState =
    | Stateless
    | StageState of obj
    | DemuxState of Map<string, Substream>
    | AsyncState of AsyncSlots

and [<NoEquality; NoComparison>] internal Substream = {
    Nodes: Node[]
    States: NodeState[]
    LastActive: DateTimeOffset
}

/// Where a deferred call's async node is: the demux substreams to descend into, then the node index.
type internal Location = {
    Demuxes: (int * string) list
    Node: int
}

[<Sealed; NoEquality; NoComparison>]
type PipeRun
    internal (mode: AsyncMode, nodes: Node[], states: NodeState[], calls: Map<int, Location>, nextCall: int) =
    member internal _.Mode = mode
    member internal _.Nodes = nodes
    member internal _.States = states
    member internal _.Calls = calls
    member internal _.NextCall = nextCall

/// What one push collects, in order.
type internal Collected(mode: AsyncMode, calls: Map<int, Location>, nextCall: int) =
    member val Outputs = ResizeArray<Envelope<obj>>()
    member val Ledger = ResizeArray<LedgerEffect>()
    member val Sinks = ResizeArray<SinkRequest>()
    member val Requests = ResizeArray<AsyncRequest>()
    member val Failures = ResizeArray<StageFailure>()
    member _.Mode = mode
    member val Calls = calls with get, set
    member val NextCall = nextCall with get, set

    member this.Effects = {
        Outputs = List.ofSeq this.Outputs
        Ledger = List.ofSeq this.Ledger
        Sinks = List.ofSeq this.Sinks
        Calls = List.ofSeq this.Requests
        Failures = List.ofSeq this.Failures
    }

[<RequireQualifiedAccess>]
module PipeRun =
    let private noSlots = { InFlight = []; Waiting = [] }

    let private initial (node: Node) =
        match node with
        | StageNode s -> StageState s.Init
        | DemuxNode _ -> DemuxState Map.empty
        | AsyncMapNode _ -> AsyncState noSlots
        | SinkNode _ -> Stateless

    let private ofNodes (nodes: Node list) =
        let nodes = Array.ofList nodes
        nodes, Array.map initial nodes

    let startWith (mode: AsyncMode) (pipe: Pipe<'i, 'o>) =
        let nodes, states = ofNodes (Pipe.nodes pipe)
        PipeRun(mode, nodes, states, Map.empty, 1)

    let start pipe = startWith RunInline pipe

    let private failed (acc: Collected) stage position error =
        acc.Failures.Add {
            Stage = stage
            Position = position
            Error = error
        }

    /// Steps stage i with an event; returns what it emitted (nothing if it threw).
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

    /// Starts a deferred call of async node i (at `path`, innermost demux first) for an envelope.
    let private request (acc: Collected) path i name run (env: Envelope<obj>) =
        let id = acc.NextCall
        acc.NextCall <- id + 1
        acc.Calls <- Map.add id { Demuxes = List.rev path; Node = i } acc.Calls

        acc.Requests.Add {
            Id = id
            Stage = name
            Envelope = env
            Run = run
        }

        id, env, None

    /// Pushes one envelope into node i of a level; `k` receives what passes the level's end.
    let rec private pushAt
        now
        (acc: Collected)
        path
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
                    pushAt now acc path nodes states (i + 1) e k
            | SinkNode(name, write) ->
                acc.Sinks.Add {
                    Sink = name
                    Envelope = env
                    Write = write
                    Substream =
                        match path with
                        | [] -> ""
                        | [ (_, key) ] -> key
                        | _ -> path |> List.rev |> List.map snd |> String.concat "\u001f"
                }
            | AsyncMapNode(name, parallelism, run) ->
                match acc.Mode, states[i] with
                | Defer, AsyncState slots ->
                    states[i] <-
                        AsyncState(
                            if slots.InFlight.Length < parallelism then
                                {
                                    slots with
                                        InFlight = slots.InFlight @ [ request acc path i name run env ]
                                }
                            else
                                {
                                    slots with
                                        Waiting = slots.Waiting @ [ env ]
                                }
                        )
                | _ ->
                    match
                        (try
                            Ok((run env.Value).GetAwaiter().GetResult())
                         with ex ->
                             Error ex)
                    with
                    | Ok value -> pushAt now acc path nodes states (i + 1) (Envelope.withValue value env) k
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

                    let after out =
                        pushAt now acc path nodes states (i + 1) out k

                    pushAt now acc ((i, key) :: path) sub.Nodes subStates 0 env after

                    let sub' = {
                        sub with
                            States = subStates
                            LastActive = now
                    }

                    match states[i] with
                    | DemuxState subs -> states[i] <- DemuxState(Map.add key sub' subs)
                    | _ -> ()

    /// Whether a level holds async calls in flight or waiting (a substream that does is never dropped).
    let rec private busy (states: NodeState[]) =
        states
        |> Array.exists (function
            | AsyncState s -> not (List.isEmpty s.InFlight && List.isEmpty s.Waiting)
            | DemuxState subs -> subs |> Map.exists (fun _ s -> busy s.States)
            | _ -> false)

    /// Sends a non-message event to every stage of a level, in order.
    let rec private broadcastAt
        now
        (acc: Collected)
        path
        (nodes: Node[])
        (states: NodeState[])
        (event: Event<obj>)
        k
        =
        for i in 0 .. nodes.Length - 1 do
            let after out =
                pushAt now acc path nodes states (i + 1) out k

            match nodes[i], states[i] with
            | StageNode stage, _ ->
                for e in stepStage now acc stage states i event ValueNone do
                    after e
            | DemuxNode demux, DemuxState subs ->
                let mutable subs' = subs

                for KeyValue(key, sub) in subs do
                    let subStates = Array.copy sub.States
                    broadcastAt now acc ((i, key) :: path) sub.Nodes subStates event after
                    subs' <- Map.add key { sub with States = subStates } subs'

                let isTick =
                    match event with
                    | Tick -> true
                    | _ -> false

                let drop (sub: Substream) =
                    not (busy sub.States)
                    && (match event with
                        | Flush -> true
                        | Tick -> now - sub.LastActive >= demux.Options.IdleAfter
                        | _ -> false)

                for KeyValue(key, sub) in subs' do
                    if drop sub then
                        if isTick then
                            broadcastAt
                                now
                                acc
                                ((i, key) :: path)
                                sub.Nodes
                                (Array.copy sub.States)
                                Flush
                                after

                        subs' <- Map.remove key subs'

                states[i] <- DemuxState subs'
            | _ -> ()

    let push (now: DateTimeOffset) (event: Event<obj>) (run: PipeRun) =
        let acc = Collected(run.Mode, run.Calls, run.NextCall)
        let states = Array.copy run.States

        match event with
        | Message env -> pushAt now acc [] run.Nodes states 0 env acc.Outputs.Add
        | _ -> broadcastAt now acc [] run.Nodes states event acc.Outputs.Add

        PipeRun(run.Mode, run.Nodes, states, acc.Calls, acc.NextCall), acc.Effects

    /// Records a call's result at async node i, then passes on the results now at the head (input
    /// order) and starts waiting inputs in the freed slots.
    let private settle now (acc: Collected) path (nodes: Node[]) (states: NodeState[]) i id result k =
        match nodes[i], states[i] with
        | AsyncMapNode(name, parallelism, run), AsyncState slots ->
            let inFlight =
                slots.InFlight
                |> List.map (fun (c, e, r) -> if c = id then c, e, Some result else c, e, r)

            let rec release inFlight =
                match inFlight with
                | (_, (env: Envelope<obj>), Some result) :: rest ->
                    match result with
                    | Ok value -> pushAt now acc path nodes states (i + 1) (Envelope.withValue value env) k
                    | Error ex -> failed acc name (ValueSome env.Position) ex

                    release rest
                | _ -> inFlight

            let inFlight = release inFlight
            let free = max 0 (parallelism - inFlight.Length)
            let starting = List.truncate free slots.Waiting
            let started = starting |> List.map (request acc path i name run)

            states[i] <-
                AsyncState {
                    InFlight = inFlight @ started
                    Waiting = List.skip starting.Length slots.Waiting
                }
        | _ -> ()

    let resume (now: DateTimeOffset) (callId: int) (result: Result<obj, exn>) (run: PipeRun) =
        match Map.tryFind callId run.Calls with
        | None -> invalidArgWith "callId" (sprintf "No async call %d is in flight in this run." callId)
        | Some location ->
            let acc = Collected(run.Mode, Map.remove callId run.Calls, run.NextCall)
            let states = Array.copy run.States

            let rec descend (nodes: Node[]) (states: NodeState[]) demuxes path k =
                match demuxes with
                | [] -> settle now acc path nodes states location.Node callId result k
                | (i, key) :: rest ->
                    match states[i] with
                    | DemuxState subs ->
                        let sub = subs[key]
                        let subStates = Array.copy sub.States

                        let after out =
                            pushAt now acc path nodes states (i + 1) out k

                        descend sub.Nodes subStates rest ((i, key) :: path) after

                        match states[i] with
                        | DemuxState subs ->
                            states[i] <- DemuxState(Map.add key { sub with States = subStates } subs)
                        | _ -> ()
                    | _ -> ()

            descend run.Nodes states location.Demuxes [] acc.Outputs.Add
            PipeRun(run.Mode, run.Nodes, states, acc.Calls, acc.NextCall), acc.Effects

    let rec private count (states: NodeState[]) =
        states
        |> Array.sumBy (function
            | DemuxState subs -> subs.Count + (subs |> Seq.sumBy (fun (KeyValue(_, s)) -> count s.States))
            | _ -> 0)

    let liveSubstreams (run: PipeRun) = count run.States
