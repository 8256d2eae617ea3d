// The pure interpreter of a pipe: it pushes one event through the nodes and returns the new state
// with the effects to apply. Every version of a run shares one mutable store, rerooted to the version
// pushed (src/KFlow.Core/StoreVersion.fs): a push writes in place and records each write, O(1) per write.
// An owned run (the Kafka runtime's, one caller, never going back) is written in place with no record.
namespace KFlow

open System
open System.Threading.Tasks

/// <summary>What every version of one run shares: the pipe's nodes and the mutable state (stage
/// states, substreams, calls in flight) holding the contents of its current version. Every push and
/// resume takes its lock and first reroots the store to the run it is given.</summary>
[<Sealed; NoEquality; NoComparison>]
type internal RunStore(mode: AsyncMode, top: Level, passOnly: bool, owned: bool) =
    member _.Mode = mode
    /// Whether one caller owns the run (startOwnedWith): pushOwned and resumeOwned write the store in
    /// place, record nothing and keep the one PipeRun; push and resume refuse it.
    member _.Owned = owned
    /// Whether an owned run's push or resume threw half-way (a bug): its store is then in no known
    /// state, and every later use raises.
    member val Broken = false with get, set
    /// Whether the top level holds only stateless stages (with a Pass step) and sinks, so that a
    /// message changes no state and its push returns the run itself.
    member _.PassOnly = passOnly
    /// The top level, its states written in place.
    member _.Top = top
    /// The deferred calls in flight by id.
    member val Calls = Collections.Generic.Dictionary<int, Location>()
    /// Whether a push or resume is running on it (a push from inside one of its own steps is refused).
    member val Busy = false with get, set

/// A version of a run: its store and its counters, and itself the store's version it stands for (one
/// object per push rather than two: pipe-core bench).
/// As a StoreVersion (StoreVersion.fs; not its subclass, PipeRun being public): the current version
/// has no Newer (null), an older one the Newer and the Diff that turns Newer's contents into its own.
[<Sealed; NoEquality; NoComparison>]
type PipeRun internal (store: RunStore, nextCall: int, nextHold: int) =
    member internal _.Store = store
    member val internal Newer: PipeRun = Unchecked.defaultof<PipeRun> with get, set
    member val internal Diff: Change = null with get, set
    /// The next call id and hold id (written in place only by an owned run's pushes).
    member val internal NextCall = nextCall with get, set
    member val internal NextHold = nextHold with get, set

[<RequireQualifiedAccess>]
module PipeRun =
    /// Makes the store hold `run`'s contents, as StoreVersion.reroot does: the diffs from the current
    /// run back to it applied and turned around. O(1) when it is current already.
    let private reroot (run: PipeRun) =
        if not (isNull (box run.Newer)) then
            let chain = Collections.Generic.Stack<PipeRun>()
            let mutable v = run

            while not (isNull (box v.Newer)) do
                chain.Push v
                v <- v.Newer

            while chain.Count > 0 do
                let older = chain.Pop()
                v.Diff <- StoreVersion.turn older.Diff
                v.Newer <- older
                older.Diff <- null
                older.Newer <- Unchecked.defaultof<PipeRun>
                v <- older

    let private create owned (mode: AsyncMode) (pipe: Pipe<'i, 'o>) =
        let top = RunState.top (Pipe.nodes pipe)

        // Never for an owned run: push then goes through exclusive, which refuses it (a check here
        // would make push too large to inline: pipe-core bench (b), +32 B per message).
        let passOnly =
            not owned
            && (top.Nodes
                |> Array.forall (function
                    | StageNode s -> ValueOption.isSome s.Pass
                    | SinkNode _
                    | ExactlyOnceSinkNode _ -> true
                    | DemuxNode _
                    | AsyncMapNode _ -> false))

        PipeRun(RunStore(mode, top, passOnly, owned), 1, 1)

    let startWith mode pipe = create false mode pipe

    let start pipe = startWith RunInline pipe

    let startOwnedWith mode pipe = create true mode pipe

    let startOwned pipe = startOwnedWith RunInline pipe

    // The refusals, apart from the inlined functions that raise them (exclusive, owning).
    let private ownedRefused () =
        invalidOp
            "This PipeRun is owned (PipeRun.startOwnedWith): push it with PipeRun.pushOwned and resume it \
             with PipeRun.resumeOwned."

    let private valueRefused () =
        invalidOp
            "This PipeRun is a value (PipeRun.start / startWith): push it with PipeRun.push and resume it \
             with PipeRun.resume."

    let private brokenRefused () =
        invalidOp
            "This owned PipeRun is broken: a push or resume threw half-way through its store, which cannot \
             be undone. Start a new run (and replay from the last commit point)."

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

    let private tryMessage (step: MessageStep) now env state =
        try
            Ok(step.Invoke(now, env, state))
        with ex ->
            Error ex

    /// Steps stage i with an event (ValueNone: a Message of `input`, built only for a stage with no
    /// message step of its own); returns what it emitted (nothing if it threw).
    let private stepStage now (acc: Collected) (stage: Stage<obj, obj>) (states: NodeState[]) i event input =
        match states[i] with
        | StageState cell ->
            let state = cell.State

            let stepped =
                match event, input, stage.OnMessage with
                | ValueNone, ValueSome env, ValueSome onMessage -> tryMessage onMessage now env state
                | ValueNone, ValueSome env, ValueNone -> tryStep stage.Step now (Message env) state
                | ValueSome event, _, _ -> tryStep stage.Step now event state
                | ValueNone, ValueNone, _ -> Ok(struct (state, Output.none))

            match stepped with
            | Ok(struct (state', output)) ->
                if not (obj.ReferenceEquals(state, state')) then
                    acc.SetState(cell, state')

                for e in output.Effects do
                    acc.Ledger e

                output.Emitted
            | Error ex ->
                failed acc (Stage.name stage) input ex
                []
        | _ -> []

    /// Starts a deferred call of async node i of a level for an envelope.
    let private request (acc: Collected) (level: Level) i name run (env: Envelope<obj>) =
        let id = acc.NextCall
        acc.NextCall <- id + 1
        acc.Call(id, { Level = level; Node = i })

        acc.Request {
            Id = id
            Stage = name
            Envelope = env
            Run = run
        }

        Started(id, env, None)

    /// The index of a substream's demux in its parent level (a substream's path starts with it).
    let private demuxIndex (level: Level) =
        match level.Path with
        | struct (i, _) :: _ -> i
        | [] -> -1

    /// <summary>Pushes one envelope into node i of a level. What passes the end of a substream goes on
    /// after its demux in the parent level; what passes the top level's end is an output.</summary>
    let rec private pushAt now (acc: Collected) (level: Level) i (env: Envelope<obj>) =
        let nodes = level.Nodes
        let states = level.States

        if i >= nodes.Length then
            match level.Parent with
            | null -> acc.Output env
            | parent -> pushAt now acc parent (demuxIndex level + 1) env
        else
            match nodes[i] with
            | StageNode stage ->
                match stage.Pass with
                | ValueSome pass ->
                    match tryPass pass env with
                    | Ok(ValueSome out) -> pushAt now acc level (i + 1) out
                    | Ok ValueNone ->
                        for t in env.Tokens do
                            acc.Ledger(Complete t)
                    | Error ex -> failed acc (Stage.name stage) (ValueSome env) ex
                | ValueNone ->
                    for e in stepStage now acc stage states i ValueNone (ValueSome env) do
                        pushAt now acc level (i + 1) e
            | SinkNode(name, write, pipelining) ->
                acc.Sink {
                    Sink = name
                    Envelope = env
                    Write = write
                    Substream = level.Name
                    Pipelining = pipelining
                }
            | ExactlyOnceSinkNode(name, _, write, pipelining) ->
                acc.Sink {
                    Sink = name
                    Envelope = env
                    Write = write (AppliedOffsets.positionsOf env)
                    Substream = level.Name
                    Pipelining = pipelining
                }
            | AsyncMapNode(name, parallelism, run) ->
                match acc.Mode, states[i] with
                | Defer, AsyncState queue ->
                    if AsyncQueue.canStart parallelism queue then
                        let entry = request acc level i name run env
                        // The state write rides on the call's change (one change, not two).
                        acc.SetWithCall(
                            acc.LastCall,
                            { Level = level; Node = i },
                            AsyncState(AsyncQueue.enqueue entry queue)
                        )
                    else
                        acc.Set(states, i, AsyncState(AsyncQueue.enqueue (Queued env) queue))
                | _ ->
                    match attempt (fun () -> (run env.Value).GetAwaiter().GetResult()) with
                    | Ok value -> pushAt now acc level (i + 1) (Envelope.withValue value env)
                    | Error ex -> failed acc name (ValueSome env) ex
            | DemuxNode demux ->
                match tryKey demux env, states[i] with
                | Error ex, _ -> failed acc "demux key" (ValueSome env) ex
                | Ok key, DemuxState d ->
                    match d.Subs.TryGetValue key with
                    | true, sub ->
                        acc.SetActive(sub, now)
                        pushAt now acc sub 0 env
                    | _ ->
                        // A new key's sub-pipe is built now; a routeDependent route that throws fails the message.
                        match attempt (fun () -> RunState.substream level i demux key now) with
                        | Error ex -> failed acc "routeDependent" (ValueSome env) ex
                        | Ok sub ->
                            acc.AddSubstream(d, key, sub)
                            pushAt now acc sub 0 env
                | Ok _, _ -> ()

    /// <summary>Sends a broadcast event (Tick, Flush, Revoked, Assigned) to the nodes of a level from
    /// node <paramref name="from"/> on, in order.</summary>
    /// <remarks>An async node or a demux may hold it (see mustFollow); the nodes after it then get it
    /// when it is released. `passed` is called with the hold id and the event once it passes the
    /// level's end, now or on a later resume.</remarks>
    and private broadcastFrom
        now
        (acc: Collected)
        (level: Level)
        from
        (hold: int)
        (event: Event<obj>)
        (passed: int -> Event<obj> -> unit)
        =
        let nodes = level.Nodes
        let states = level.States

        let rec go i =
            if i >= nodes.Length then
                passed hold event
            else
                match nodes[i], states[i] with
                | StageNode stage, _ ->
                    for e in stepStage now acc stage states i (ValueSome event) ValueNone do
                        pushAt now acc level (i + 1) e

                    go (i + 1)
                | AsyncMapNode _, AsyncState queue ->
                    match AsyncQueue.holdIn hold event queue with
                    | Some queue -> acc.Set(states, i, RunState.asyncState queue)
                    | None -> go (i + 1)
                | DemuxNode demux, DemuxState d ->
                    if demuxAt now acc demux d hold event then
                        go (i + 1)
                | _ -> go (i + 1)

        go from

    /// Broadcasts into every substream of a demux (in key order), drops those idle (Tick) or flushed
    /// (Flush) and not busy, and holds the event while a substream holds it; true if it passes now.
    and private demuxAt now (acc: Collected) (demux: Demux) (d: Demuxed) hold event =
        let keys = RunState.sortedKeys d
        let mutable waiting = Set.empty

        for key in keys do
            let through = ref false
            broadcastFrom now acc d.Subs[key] 0 hold event (fun _ _ -> through.Value <- true)

            if not through.Value then
                waiting <- waiting.Add key

        let drop key sub = acc.DropSubstream(d, key, sub)

        for key in keys do
            let sub = d.Subs[key]

            if not (RunState.busy sub.States) then
                match event with
                | Flush -> drop key sub
                | Tick when now - sub.LastActive >= demux.Options.IdleAfter ->
                    // Flushed first; kept if that flush started async calls (dropped at a later tick).
                    broadcastFrom now acc sub 0 (acc.TakeHold()) Flush unwatched

                    if not (RunState.busy sub.States) then
                        drop key sub
                | _ -> ()

        let passes, held = RunState.reachDemux hold event waiting d.Held
        acc.SetHeld(d, held)
        passes

    /// <summary>Runs a push or resume of `run` under its store's lock: reroots the store to `run`, lets
    /// `body` write to it through the collector, and returns the new run with the effects.</summary>
    /// <remarks>A body that throws (a bug: user code's throws are reported) leaves the store as it
    /// was.</remarks>
    let inline private exclusive (run: PipeRun) ([<InlineIfLambda>] body: Collected -> unit) =
        let store = run.Store
        let mutable locked = false

        try
            Threading.Monitor.Enter(store, &locked)

            if store.Owned then
                ownedRefused ()

            if store.Busy then
                invalidOp "A PipeRun was pushed or resumed from inside one of its own steps."

            store.Busy <- true

            try
                reroot run
                let acc = Collected.Take(store.Mode, store.Calls, run.NextCall, run.NextHold, false)

                try
                    try
                        body acc
                    with _ ->
                        StoreVersion.revert acc.Changes
                        reraise ()

                    // The run itself when nothing changed; else a new current version, `run` a diff to it.
                    let run' =
                        if
                            isNull acc.Changes && acc.NextCall = run.NextCall && acc.NextHold = run.NextHold
                        then
                            run
                        else
                            let next = PipeRun(store, acc.NextCall, acc.NextHold)
                            run.Diff <- acc.Changes
                            run.Newer <- next
                            next

                    run', acc.Effects
                finally
                    acc.Release()
            finally
                store.Busy <- false
        finally
            if locked then
                Threading.Monitor.Exit store

    // Apart from push, so that push stays small: the JIT then inlines it, and for a pass-only pipe
    // removes the result tuple its caller takes apart at once (pipe-core bench (b): 32 B per message).
    let private pushMessage now env (run: PipeRun) =
        exclusive run (fun acc -> pushAt now acc run.Store.Top 0 env)

    let private broadcast now event (run: PipeRun) =
        exclusive run (fun acc -> broadcastFrom now acc run.Store.Top 0 (acc.TakeHold()) event unwatched)

    let push (now: DateTimeOffset) (event: Event<obj>) (run: PipeRun) =
        let store = run.Store

        match event with
        | Message env when store.PassOnly ->
            // Only stateless stages and sinks at the top: a message changes no state.
            let acc = Collected.Take(store.Mode, store.Calls, run.NextCall, run.NextHold, false)

            try
                pushAt now acc store.Top 0 env
                run, acc.Effects
            finally
                acc.Release()
        | Message env -> pushMessage now env run
        | _ -> broadcast now event run

    /// Substream `sub` let a held event through: the events no substream of its demux holds any more
    /// go on after the demux, oldest first, as long as none older is still held.
    let rec private released now (acc: Collected) (sub: Level) hold (_: Event<obj>) =
        match sub.Parent, sub.Path with
        | null, _
        | _, [] -> ()
        | parent, struct (i, key) :: _ ->
            match parent.States[i] with
            | DemuxState d ->
                let ready, held = RunState.letThrough hold key d.Held
                acc.SetHeld(d, held)

                for h in ready do
                    broadcastFrom now acc parent (i + 1) h.Hold h.Event (passedOn now acc parent)
            | _ -> ()

    /// What a resume does with an event passing the end of a level: at the top nothing; at a
    /// substream, it is let through at its demux.
    and private passedOn now acc (level: Level) =
        match level.Parent with
        | null -> unwatched
        | _ -> released now acc level

    /// An entry leaving the queue of async node i: an answered call's result or failure, or a held event.
    let private goOn now acc (level: Level) i name entry =
        match entry with
        | Started(_, env, Some(Ok value)) -> pushAt now acc level (i + 1) (Envelope.withValue value env)
        | Started(_, env, Some(Error ex)) -> failed acc name (ValueSome env) ex
        | Held(hold, event) -> broadcastFrom now acc level (i + 1) hold event (passedOn now acc level)
        | _ -> ()

    /// Records a call's result at async node i of a level, then passes on what is now at the head of
    /// its queue (results in input order, and the events held behind them) and starts waiting inputs
    /// in the freed slots.
    let private settle now (acc: Collected) (ended: CallChange) (level: Level) i id result =
        match level.Nodes[i], level.States[i] with
        | AsyncMapNode(name, parallelism, run), AsyncState queue ->
            let queue =
                match AsyncQueue.answerOldest id queue with
                | ValueSome(struct (env, rest)) ->
                    // The oldest call answered (the usual case): it goes on first, then what it held back.
                    match result with
                    | Ok value -> pushAt now acc level (i + 1) (Envelope.withValue value env)
                    | Error ex -> failed acc name (ValueSome env) ex

                    let ready, rest = AsyncQueue.ready rest

                    for entry in ready do
                        goOn now acc level i name entry

                    rest
                | ValueNone ->
                    let ready, queue = queue |> AsyncQueue.withResult id result |> AsyncQueue.ready

                    for entry in ready do
                        goOn now acc level i name entry

                    queue

            // The start function is built only when an input waits (a closure per resume otherwise).
            // The state write rides on the ended call's change (one change, not two).
            acc.SetWithCall(
                ended,
                { Level = level; Node = i },
                RunState.asyncState (
                    if AsyncQueue.waiting queue = 0 then
                        queue
                    else
                        AsyncQueue.startWaiting parallelism (request acc level i name run) queue
                )
            )
        | _ -> ()

    let resume (now: DateTimeOffset) (callId: int) (result: Result<obj, exn>) (run: PipeRun) =
        exclusive run (fun acc ->
            match acc.Calls.TryGetValue callId with
            | false, _ ->
                invalidArgWith "callId" (sprintf "No async call %d is in flight in this run." callId)
            | true, location ->
                let ended = acc.EndCall(callId, location)
                settle now acc ended location.Level location.Node callId result)

    /// Refuses a value run and a broken owned one.
    let private usable (store: RunStore) =
        if not store.Owned then
            valueRefused ()

        if store.Broken then
            brokenRefused ()

    /// <summary>Runs a push or resume of an owned run: `body` writes its store in place through the
    /// collector, recording nothing; returns the effects.</summary>
    /// <remarks>A body that throws (a bug: user code's throws are reported) cannot be undone: the run
    /// is marked broken and refuses every later use.</remarks>
    let inline private owning (run: PipeRun) ([<InlineIfLambda>] body: Collected -> unit) =
        let store = run.Store
        usable store

        if store.Busy then
            invalidOp "A PipeRun was pushed or resumed from inside one of its own steps."

        store.Busy <- true
        let acc = Collected.Take(store.Mode, store.Calls, run.NextCall, run.NextHold, true)

        try
            try
                body acc
            with _ ->
                store.Broken <- true
                reraise ()

            run.NextCall <- acc.NextCall
            run.NextHold <- acc.NextHold
            acc.Effects
        finally
            acc.Release()
            store.Busy <- false

    let pushMessageOwned (now: DateTimeOffset) (env: Envelope<obj>) (run: PipeRun) =
        owning run (fun acc -> pushAt now acc run.Store.Top 0 env)

    let pushOwned (now: DateTimeOffset) (event: Event<obj>) (run: PipeRun) =
        match event with
        | Message env -> pushMessageOwned now env run
        | _ -> owning run (fun acc -> broadcastFrom now acc run.Store.Top 0 (acc.TakeHold()) event unwatched)

    let resumeOwned (now: DateTimeOffset) (callId: int) (result: Result<obj, exn>) (run: PipeRun) =
        usable run.Store

        // An unknown call is the caller's error, refused before anything is written (not a broken run).
        let location: Location =
            match run.Store.Calls.TryGetValue callId with
            | true, location -> location
            | false, _ ->
                invalidArgWith "callId" (sprintf "No async call %d is in flight in this run." callId)

        owning run (fun acc ->
            let ended = acc.EndCall(callId, location)
            settle now acc ended location.Level location.Node callId result)

    /// Reads the store as `run` holds it, under its lock.
    let private reading (run: PipeRun) (read: NodeState[] -> 'r) =
        lock run.Store (fun () ->
            if run.Store.Broken then
                brokenRefused ()

            if run.Store.Busy then
                invalidOp "A PipeRun was read from inside one of its own steps."

            reroot run
            read run.Store.Top.States)

    let liveSubstreams (run: PipeRun) = reading run RunState.count

    let held (run: PipeRun) =
        reading run RunState.holdsIn
        |> List.distinctBy fst
        |> List.sortBy fst
        |> List.map snd
