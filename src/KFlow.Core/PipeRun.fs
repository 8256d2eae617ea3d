// The pure interpreter of a pipe: it pushes one event through the nodes and returns the new state
// with the effects to apply. Inside a push it works on copies of the state arrays it touches.
namespace KFlow

open System
open System.Threading.Tasks

[<Sealed; NoEquality; NoComparison>]
type PipeRun
    internal
    (
        mode: AsyncMode,
        nodes: Node[],
        states: NodeState[],
        calls: Map<int, Location>,
        nextCall: int,
        nextHold: int,
        passOnly: bool
    ) =
    member internal _.Mode = mode
    /// Whether the top level holds only stateless stages (with a Pass step) and sinks, so that a
    /// message changes no state and its push returns the run itself.
    member internal _.PassOnly = passOnly
    member internal _.Nodes = nodes
    member internal _.States = states
    member internal _.Calls = calls
    member internal _.NextCall = nextCall
    member internal _.NextHold = nextHold

[<RequireQualifiedAccess>]
module PipeRun =
    let startWith (mode: AsyncMode) (pipe: Pipe<'i, 'o>) =
        let nodes, states = RunState.ofNodes (Pipe.nodes pipe)

        let passOnly =
            nodes
            |> Array.forall (function
                | StageNode s -> ValueOption.isSome s.Pass
                | SinkNode _
                | ExactlyOnceSinkNode _ -> true
                | DemuxNode _
                | AsyncMapNode _ -> false)

        PipeRun(mode, nodes, states, Map.empty, 1, 1, passOnly)

    let start pipe = startWith RunInline pipe

    /// A `passed` nobody waits on (the root level, and the flush of a substream dropped as idle).
    let private unwatched (_: int) (_: Event<obj>) = ()

    /// Records a failure of `stage` on an input envelope (ValueNone: a broadcast event).
    let private failed (acc: Collected) stage (input: Envelope<obj> voption) error =
        acc.Failure {
            Stage = stage
            Position = input |> ValueOption.map (fun e -> e.Position)
            Tokens =
                match input with
                | ValueSome e -> e.Tokens
                | ValueNone -> []
            Error = error
        }

    // User code (steps, key functions, async calls run inline) runs under these: a throw is
    // reported, never let through the interpreter. No closure is built per call (Result is a struct).
    let private tryStep (step: UntypedStep) now event state =
        try
            Ok(step.Invoke(now, event, state))
        with ex ->
            Error ex

    let private tryPass (pass: PassStep) env =
        try
            Ok(pass.Invoke env)
        with ex ->
            Error ex

    let private tryKey (demux: Demux) env =
        try
            Ok(demux.Key env)
        with ex ->
            Error ex

    /// Steps stage i with an event; returns what it emitted (nothing if it threw).
    let private stepStage now (acc: Collected) (stage: Stage<obj, obj>) (states: NodeState[]) i event input =
        match states[i] with
        | StageState state ->
            match tryStep stage.Step now event state with
            | Ok(struct (state', output)) ->
                if not (obj.ReferenceEquals(state, state')) then
                    states[i] <- StageState state'

                for e in output.Effects do
                    acc.Ledger e

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

        acc.Request {
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
                match stage.Pass with
                | ValueSome pass ->
                    match tryPass pass env with
                    | Ok(ValueSome out) -> pushAt now acc path nodes states (i + 1) out k
                    | Ok ValueNone ->
                        for t in env.Tokens do
                            acc.Ledger(Complete t)
                    | Error ex -> failed acc (Stage.name stage) (ValueSome env) ex
                | ValueNone ->
                    for e in stepStage now acc stage states i (Message env) (ValueSome env) do
                        pushAt now acc path nodes states (i + 1) e k
            | SinkNode(name, write, pipelining) ->
                acc.Sink {
                    Sink = name
                    Envelope = env
                    Write = write
                    Substream = RunState.substreamName path
                    Pipelining = pipelining
                }
            | ExactlyOnceSinkNode(name, _, write, pipelining) ->
                acc.Sink {
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
                match tryKey demux env with
                | Error ex -> failed acc "demux key" (ValueSome env) ex
                | Ok key ->
                    // A new key's sub-pipe is built now; a routeDependent route that throws fails the message.
                    let sub =
                        match (RunState.demuxed states[i]).Subs.TryGetValue key with
                        | true, sub -> Ok sub
                        | _ -> attempt (fun () -> RunState.substream demux key now)

                    match sub with
                    | Error ex -> failed acc "routeDependent" (ValueSome env) ex
                    | Ok sub ->
                        let subStates = Array.copy sub.States

                        let after out =
                            pushAt now acc path nodes states (i + 1) out k

                        pushAt now acc (struct (i, key) :: path) sub.Nodes subStates 0 env after

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

            broadcastFrom now acc (struct (i, key) :: path) sub.Nodes subStates 0 hold event after (fun _ _ ->
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
                    let at = struct (i, key) :: path
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
        let acc = Collected.Take(run.Mode, run.Calls, run.NextCall, run.NextHold)

        try
            match event with
            | Message env when run.PassOnly ->
                // Only stateless stages and sinks at the top: a message changes no state.
                pushAt now acc [] run.Nodes run.States 0 env acc.Emit
                run, acc.Effects
            | _ ->
                let states = Array.copy run.States

                match event with
                | Message env -> pushAt now acc [] run.Nodes states 0 env acc.Emit
                | _ -> broadcastFrom now acc [] run.Nodes states 0 (acc.TakeHold()) event acc.Emit unwatched

                PipeRun(run.Mode, run.Nodes, states, acc.Calls, acc.NextCall, acc.NextHold, run.PassOnly),
                acc.Effects
        finally
            acc.Release()

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

            // The start function is built only when an input waits (a closure per resume otherwise).
            states[i] <-
                AsyncState(
                    if AsyncQueue.waiting queue = 0 then
                        queue
                    else
                        AsyncQueue.startWaiting parallelism (request acc path i name run) queue
                )
        | _ -> ()

    /// Substream `key` of demux i let a held event through: the events no substream holds any more
    /// go on after the demux, oldest first, as long as none older is still held.
    let private released now acc path (nodes: Node[]) (states: NodeState[]) i key k passed hold _event =
        let ready, d = RunState.letThrough hold key (RunState.demuxed states[i])
        states[i] <- DemuxState d

        for h in ready do
            broadcastFrom now acc path nodes states (i + 1) h.Hold h.Event k passed

    let resume (now: DateTimeOffset) (callId: int) (result: Result<obj, exn>) (run: PipeRun) =
        match run.Calls.TryGetValue callId with
        | false, _ -> invalidArgWith "callId" (sprintf "No async call %d is in flight in this run." callId)
        | true, location ->
            let acc =
                Collected.Take(run.Mode, Map.remove callId run.Calls, run.NextCall, run.NextHold)

            try
                let states = Array.copy run.States

                let rec descend (nodes: Node[]) (states: NodeState[]) demuxes path k passed =
                    match demuxes with
                    | [] -> settle now acc path nodes states location.Node callId result k passed
                    | struct (i, key) :: rest ->
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
                                (struct (i, key) :: path)
                                after
                                (released now acc path nodes states i key k passed)

                            states[i] <- RunState.withSub key { sub with States = subStates } states[i]
                        | _ -> ()

                descend run.Nodes states location.Demuxes [] acc.Emit unwatched

                PipeRun(run.Mode, run.Nodes, states, acc.Calls, acc.NextCall, acc.NextHold, run.PassOnly),
                acc.Effects
            finally
                acc.Release()

    let liveSubstreams (run: PipeRun) = RunState.count run.States

    let held (run: PipeRun) =
        RunState.holdsIn run.States
        |> List.distinctBy fst
        |> List.sortBy fst
        |> List.map snd
