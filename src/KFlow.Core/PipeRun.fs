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
    Pipelining: SinkPipelining
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
    Tokens: Token list
    Error: exn
}

[<RequireQualifiedAccess>]
module StageFailure =
    let positions (failure: StageFailure) =
        failure.Tokens |> List.map (fun t -> t.Position) |> List.distinct

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

[<Sealed; NoEquality; NoComparison>]
type PipeRun
    internal
    (
        mode: AsyncMode,
        nodes: Node[],
        states: NodeState[],
        calls: Map<int, Location>,
        nextCall: int,
        nextHold: int
    ) =
    member internal _.Mode = mode
    member internal _.Nodes = nodes
    member internal _.States = states
    member internal _.Calls = calls
    member internal _.NextCall = nextCall
    member internal _.NextHold = nextHold

/// What one push collects, in order.
type internal Collected(mode: AsyncMode, calls: Map<int, Location>, nextCall: int, nextHold: int) =
    member val Outputs = ResizeArray<Envelope<obj>>()
    member val Ledger = ResizeArray<LedgerEffect>()
    member val Sinks = ResizeArray<SinkRequest>()
    member val Requests = ResizeArray<AsyncRequest>()
    member val Failures = ResizeArray<StageFailure>()
    member _.Mode = mode
    member val Calls = calls with get, set
    member val NextCall = nextCall with get, set
    member val NextHold = nextHold with get, set

    /// A new hold id (one per broadcast).
    member this.TakeHold() =
        let hold = this.NextHold
        this.NextHold <- hold + 1
        hold

    member this.Effects = {
        Outputs = List.ofSeq this.Outputs
        Ledger = List.ofSeq this.Ledger
        Sinks = List.ofSeq this.Sinks
        Calls = List.ofSeq this.Requests
        Failures = List.ofSeq this.Failures
    }

[<RequireQualifiedAccess>]
module PipeRun =
    let startWith (mode: AsyncMode) (pipe: Pipe<'i, 'o>) =
        let nodes, states = RunState.ofNodes (Pipe.nodes pipe)
        PipeRun(mode, nodes, states, Map.empty, 1, 1)

    let start pipe = startWith RunInline pipe

    /// A `passed` nobody waits on (the root level, and the flush of a substream dropped as idle).
    let private unwatched (_: int) (_: Event<obj>) = ()

    /// Records a failure of `stage` on an input envelope (ValueNone: a broadcast event).
    let private failed (acc: Collected) stage (input: Envelope<obj> voption) error =
        acc.Failures.Add {
            Stage = stage
            Position = input |> ValueOption.map (fun e -> e.Position)
            Tokens =
                match input with
                | ValueSome e -> e.Tokens
                | ValueNone -> []
            Error = error
        }

    /// Steps stage i with an event; returns what it emitted (nothing if it threw).
    let private stepStage now (acc: Collected) (stage: Stage<obj, obj>) (states: NodeState[]) i event input =
        match states[i] with
        | StageState state ->
            match attempt (fun () -> stage.Step now event state) with
            | Ok(state', output) ->
                states[i] <- StageState state'
                acc.Ledger.AddRange output.Effects
                output.Emitted
            | Error ex ->
                failed acc (Stage.name stage) input ex
                []
        | _ -> []

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

        Started(id, env, None)

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
                for e in stepStage now acc stage states i (Message env) (ValueSome env) do
                    pushAt now acc path nodes states (i + 1) e k
            | SinkNode(name, write, pipelining) ->
                acc.Sinks.Add {
                    Sink = name
                    Envelope = env
                    Write = write
                    Substream = RunState.substreamName path
                    Pipelining = pipelining
                }
            | ExactlyOnceSinkNode(name, _, write, pipelining) ->
                acc.Sinks.Add {
                    Sink = name
                    Envelope = env
                    Write = write (AppliedOffsets.positionsOf env)
                    Substream = RunState.substreamName path
                    Pipelining = pipelining
                }
            | AsyncMapNode(name, parallelism, run) ->
                match acc.Mode, states[i] with
                | Defer, AsyncState queue ->
                    let entry =
                        if AsyncQueue.canStart parallelism queue then
                            request acc path i name run env
                        else
                            Queued env

                    states[i] <- AsyncState(AsyncQueue.enqueue entry queue)
                | _ ->
                    match attempt (fun () -> (run env.Value).GetAwaiter().GetResult()) with
                    | Ok value -> pushAt now acc path nodes states (i + 1) (Envelope.withValue value env) k
                    | Error ex -> failed acc name (ValueSome env) ex
            | DemuxNode demux ->
                match attempt (fun () -> demux.Key env) with
                | Error ex -> failed acc "demux key" (ValueSome env) ex
                | Ok key ->
                    // A new key's sub-pipe is built now; a routeDependent route that throws fails the message.
                    let sub =
                        match Map.tryFind key (RunState.demuxed states[i]).Subs with
                        | Some sub -> Ok sub
                        | None -> attempt (fun () -> RunState.substream demux key now)

                    match sub with
                    | Error ex -> failed acc "routeDependent" (ValueSome env) ex
                    | Ok sub ->
                        let subStates = Array.copy sub.States

                        let after out =
                            pushAt now acc path nodes states (i + 1) out k

                        pushAt now acc ((i, key) :: path) sub.Nodes subStates 0 env after

                        states[i] <-
                            RunState.withSub
                                key
                                {
                                    sub with
                                        States = subStates
                                        LastActive = now
                                }
                                states[i]

    /// <summary>Sends a broadcast event (Tick, Flush, Revoked, Assigned) to the nodes of a level from
    /// node <paramref name="from"/> on, in order.</summary>
    /// <remarks>An async node or a demux may hold it (see mustFollow); the nodes after it then get it
    /// when it is released. `passed` is called with the hold id and the event once it passes the
    /// level's end, now or on a later resume.</remarks>
    and private broadcastFrom
        now
        (acc: Collected)
        path
        (nodes: Node[])
        (states: NodeState[])
        from
        (hold: int)
        (event: Event<obj>)
        k
        (passed: int -> Event<obj> -> unit)
        =
        let rec go i =
            if i >= nodes.Length then
                passed hold event
            else
                let after out =
                    pushAt now acc path nodes states (i + 1) out k

                match nodes[i], states[i] with
                | StageNode stage, _ ->
                    for e in stepStage now acc stage states i event ValueNone do
                        after e

                    go (i + 1)
                | AsyncMapNode _, AsyncState queue ->
                    match AsyncQueue.holdIn hold event queue with
                    | Some queue -> states[i] <- AsyncState queue
                    | None -> go (i + 1)
                | DemuxNode demux, DemuxState d ->
                    if demuxAt now acc path states i demux d hold event after then
                        go (i + 1)
                | _ -> go (i + 1)

        go from

    /// Broadcasts into every substream of demux i, drops those idle (Tick) or flushed (Flush) and not
    /// busy, and holds the event while a substream holds it; true if it passes the demux now.
    and private demuxAt now acc path (states: NodeState[]) i (demux: Demux) (d: Demuxed) hold event after =
        let waiting = ref Set.empty
        let mutable subs = d.Subs

        for KeyValue(key, sub) in d.Subs do
            let subStates = Array.copy sub.States
            let through = ref false

            broadcastFrom now acc ((i, key) :: path) sub.Nodes subStates 0 hold event after (fun _ _ ->
                through.Value <- true)

            if not through.Value then
                waiting.Value <- waiting.Value.Add key

            subs <- Map.add key { sub with States = subStates } subs

        for KeyValue(key, sub) in subs do
            if not (RunState.busy sub.States) then
                match event with
                | Flush -> subs <- Map.remove key subs
                | Tick when now - sub.LastActive >= demux.Options.IdleAfter ->
                    // Flushed first; kept if that flush started async calls (dropped at a later tick).
                    let subStates = Array.copy sub.States
                    let at = (i, key) :: path
                    broadcastFrom now acc at sub.Nodes subStates 0 (acc.TakeHold()) Flush after unwatched

                    subs <-
                        if RunState.busy subStates then
                            Map.add key { sub with States = subStates } subs
                        else
                            Map.remove key subs
                | _ -> ()

        let passes, d = RunState.reachDemux hold event waiting.Value { d with Subs = subs }
        states[i] <- DemuxState d
        passes

    let push (now: DateTimeOffset) (event: Event<obj>) (run: PipeRun) =
        let acc = Collected(run.Mode, run.Calls, run.NextCall, run.NextHold)
        let states = Array.copy run.States

        match event with
        | Message env -> pushAt now acc [] run.Nodes states 0 env acc.Outputs.Add
        | _ -> broadcastFrom now acc [] run.Nodes states 0 (acc.TakeHold()) event acc.Outputs.Add unwatched

        PipeRun(run.Mode, run.Nodes, states, acc.Calls, acc.NextCall, acc.NextHold), acc.Effects

    /// Records a call's result at async node i, then passes on what is now at the head of its queue
    /// (results in input order, and the events held behind them) and starts waiting inputs in the
    /// freed slots.
    let private settle now (acc: Collected) path (nodes: Node[]) (states: NodeState[]) i id result k passed =
        match nodes[i], states[i] with
        | AsyncMapNode(name, parallelism, run), AsyncState queue ->
            let ready, queue = queue |> AsyncQueue.withResult id result |> AsyncQueue.ready

            for entry in ready do
                match entry with
                | Started(_, env, Some(Ok value)) ->
                    pushAt now acc path nodes states (i + 1) (Envelope.withValue value env) k
                | Started(_, env, Some(Error ex)) -> failed acc name (ValueSome env) ex
                | Held(hold, event) -> broadcastFrom now acc path nodes states (i + 1) hold event k passed
                | _ -> ()

            states[i] <- AsyncState(AsyncQueue.startWaiting parallelism (request acc path i name run) queue)
        | _ -> ()

    /// Substream `key` of demux i let a held event through: the events no substream holds any more
    /// go on after the demux, oldest first, as long as none older is still held.
    let private released now acc path (nodes: Node[]) (states: NodeState[]) i key k passed hold _event =
        let ready, d = RunState.letThrough hold key (RunState.demuxed states[i])
        states[i] <- DemuxState d

        for h in ready do
            broadcastFrom now acc path nodes states (i + 1) h.Hold h.Event k passed

    let resume (now: DateTimeOffset) (callId: int) (result: Result<obj, exn>) (run: PipeRun) =
        match Map.tryFind callId run.Calls with
        | None -> invalidArgWith "callId" (sprintf "No async call %d is in flight in this run." callId)
        | Some location ->
            let acc =
                Collected(run.Mode, Map.remove callId run.Calls, run.NextCall, run.NextHold)

            let states = Array.copy run.States

            let rec descend (nodes: Node[]) (states: NodeState[]) demuxes path k passed =
                match demuxes with
                | [] -> settle now acc path nodes states location.Node callId result k passed
                | (i, key) :: rest ->
                    match states[i] with
                    | DemuxState d ->
                        let sub = d.Subs[key]
                        let subStates = Array.copy sub.States

                        let after out =
                            pushAt now acc path nodes states (i + 1) out k

                        descend
                            sub.Nodes
                            subStates
                            rest
                            ((i, key) :: path)
                            after
                            (released now acc path nodes states i key k passed)

                        states[i] <- RunState.withSub key { sub with States = subStates } states[i]
                    | _ -> ()

            descend run.Nodes states location.Demuxes [] acc.Outputs.Add unwatched
            PipeRun(run.Mode, run.Nodes, states, acc.Calls, acc.NextCall, acc.NextHold), acc.Effects

    let liveSubstreams (run: PipeRun) = RunState.count run.States

    let held (run: PipeRun) =
        RunState.holdsIn run.States
        |> List.distinctBy fst
        |> List.sortBy fst
        |> List.map snd
