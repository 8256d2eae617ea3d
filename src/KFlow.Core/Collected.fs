// The effects one push or resume of PipeRun collects, in order: an internal mutable collector that
// PipeRun reuses per thread, never shared with the values a push returns. It makes every write to the
// run's store, recording each (none for an owned run).
namespace KFlow

open System

/// What one push collects, in order: each list newest first until Effects reverses it (a push
/// usually collects one item or none, and a one-item list needs no reversing). Internal and mutable:
/// a push or resume takes the thread's instance (Take) and hands it back (Release) once its Effects
/// are built, so the values it returns share nothing mutable (pipe-core bench: one object and one
/// closure less per push). A nested push on the same thread gets a new one.
[<Sealed; AllowNullLiteral>]
type internal Collected() =
    let mutable outputs: Envelope<obj> list = []
    let mutable ledger: LedgerEffect list = []
    let mutable sinks: SinkRequest list = []
    let mutable requests: AsyncRequest list = []
    let mutable failures: StageFailure list = []
    let mutable inUse = false

    [<ThreadStatic; DefaultValue>]
    static val mutable private cached: Collected

    static let inOrder (newestFirst: 'a list) =
        match newestFirst with
        | []
        | [ _ ] -> newestFirst
        | _ -> List.rev newestFirst

    static let nothing = {
        Outputs = []
        Ledger = []
        Sinks = []
        Calls = []
        Failures = []
    }

    let mutable changes: Change = null

    member val Mode = RunInline with get, set
    /// Whether the push writes an owned run's store (PipeRun.startOwnedWith): it writes in place and
    /// records no change (nothing goes back to an older version).
    member val Owned = false with get, set
    /// The store's calls in flight by id (written through Call and EndCall).
    member val Calls: Collections.Generic.Dictionary<int, Location> = null with get, set
    member val NextCall = 0 with get, set
    member val NextHold = 0 with get, set

    /// The thread's free instance (or a new one) set up for a push.
    static member Take
        (
            mode: AsyncMode,
            calls: Collections.Generic.Dictionary<int, Location>,
            nextCall: int,
            nextHold: int,
            owned: bool
        ) =
        let acc =
            match Collected.cached with
            | null -> Collected()
            | c when c.InUse -> Collected()
            | c -> c

        Collected.cached <- acc
        acc.InUse <- true
        acc.Mode <- mode
        acc.Owned <- owned
        acc.Calls <- calls
        acc.NextCall <- nextCall
        acc.NextHold <- nextHold
        acc

    member private _.InUse
        with get () = inUse
        and set v = inUse <- v

    /// Forgets what was collected and frees the instance for the next push.
    member this.Release() =
        this.LastCall <- Unchecked.defaultof<CallChange>
        changes <- null
        outputs <- []
        ledger <- []
        sinks <- []
        requests <- []
        failures <- []
        inUse <- false

    member _.Output(e: Envelope<obj>) = outputs <- e :: outputs
    member _.Ledger(e: LedgerEffect) = ledger <- e :: ledger
    member _.Sink(s: SinkRequest) = sinks <- s :: sinks
    member _.Request(r: AsyncRequest) = requests <- r :: requests
    member _.Failure(f: StageFailure) = failures <- f :: failures

    /// The writes to the store recorded so far, newest first (null: none).
    member _.Changes = changes

    /// Records a write to the store (before it is made).
    member _.Record(change: Change) =
        change.Next <- changes
        changes <- change

    /// Sets slot i of a states array, recording the write (none if the value is the same object).
    member this.Set(states: NodeState[], i: int, state: NodeState) =
        let old = states[i]

        if not (obj.ReferenceEquals(old, state)) then
            if not this.Owned then
                this.Record(SlotChange(states, i, old))

            states[i] <- state

    /// Sets a stage's state, recording the write (the caller checked that it is a new object).
    member this.SetState(cell: StageCell, state: obj) =
        if not this.Owned then
            this.Record(StateChange(cell, cell.State))

        cell.State <- state

    /// Sets a demux's held events, recording the write (none if they are the same list).
    member this.SetHeld(d: Demuxed, held: DemuxHold list) =
        if not (obj.ReferenceEquals(d.Held, held)) then
            if not this.Owned then
                this.Record(HeldChange(d, d.Held))

            d.Held <- held

    /// Sets a substream's last activity, recording the write (none if it is the same).
    member this.SetActive(sub: Level, now: DateTimeOffset) =
        if sub.LastActive <> now then
            if not this.Owned then
                this.Record(ActiveChange(sub, sub.LastActive))

            sub.LastActive <- now

    /// Adds a new substream to a demux, recording the write.
    member this.AddSubstream(d: Demuxed, key: string, sub: Level) =
        if not this.Owned then
            this.Record(EntryChange(d.Subs, key, ValueNone))

        d.Subs[key] <- sub

    /// Drops a substream of a demux, recording the write.
    member this.DropSubstream(d: Demuxed, key: string, sub: Level) =
        if not this.Owned then
            this.Record(EntryChange(d.Subs, key, ValueSome sub))

        d.Subs.Remove key |> ignore

    /// The change of the last call started (Call): its node's state write can be attached to it (null
    /// when owned: nothing is recorded).
    member val LastCall: CallChange = Unchecked.defaultof<CallChange> with get, set

    /// Records a call in flight at a location.
    member this.Call(id: int, location: Location) =
        if not this.Owned then
            let change = CallChange(this.Calls, id, null, 0)
            this.Record change
            this.LastCall <- change

        this.Calls[id] <- location

    /// Forgets a call in flight; returns the change, to which its node's state write can be attached
    /// (null when owned).
    member this.EndCall(id: int, location: Location) =
        if this.Owned then
            this.Calls.Remove id |> ignore
            Unchecked.defaultof<CallChange>
        else
            let change = CallChange(this.Calls, id, location.Level, location.Node)
            this.Record change
            this.Calls.Remove id |> ignore
            change

    /// Sets the state of the async node at `location`, the write carried by `call`, a change of a call at
    /// that location recorded since that node's state was last written (none if the state is the same
    /// object). Owned (`call` is null): written in place.
    member this.SetWithCall(call: CallChange, location: Location, state: NodeState) =
        let states = location.Level.States

        if not (obj.ReferenceEquals(states[location.Node], state)) then
            if this.Owned then
                states[location.Node] <- state
            else
                call.Attach(location, state)

    /// A new hold id (one per broadcast).
    member this.TakeHold() =
        let hold = this.NextHold
        this.NextHold <- hold + 1
        hold

    member _.Effects =
        match outputs, ledger, sinks, requests, failures with
        | [], [], [], [], [] -> nothing
        | _ -> {
            Outputs = inOrder outputs
            Ledger = inOrder ledger
            Sinks = inOrder sinks
            Calls = inOrder requests
            Failures = inOrder failures
          }
