// The state of a running pipe, per node and per demux substream: stage states, async nodes' queues
// (calls in input order, inputs waiting for a slot, broadcast events held behind them) and the
// events a demux holds. PipeRun interprets a pipe over it.
namespace KFlow

open System
open System.Collections.Generic

/// A broadcast event held at a demux until none of the substreams in Waiting holds it.
[<NoEquality; NoComparison>]
type internal DemuxHold = {
    Hold: int
    Event: Event<obj>
    Waiting: Set<string>
}

[<NoEquality; NoComparison>]
type internal NodeState =
    | Stateless
    | StageState of StageCell
    | DemuxState of Demuxed
    | AsyncState of AsyncQueue

/// A stage's state in a level, written in place (each write recorded as a StateChange but in an owned
/// run): a new state costs one change instead of a new NodeState and a slot change.
and [<Sealed>] internal StageCell(state: obj) =
    member val State = state with get, set

/// A demux's live substreams by key, and the events it holds, oldest first. Mutable: it belongs to
/// one PipeRun store, whose pushes record every write as a Change (so older runs stay valid), but for
/// an owned run.
and [<Sealed>] internal Demuxed(subs: Dictionary<string, Level>) =
    member _.Subs = subs
    member val Held: DemuxHold list = [] with get, set

/// <summary>A level of a running pipe: the top level (no Parent) or a demux substream. Its nodes, their
/// states (written in place, each write recorded but in an owned run), where what passes its end goes
/// (node At + 1 of the Parent level) and when it last received a message. Built once per substream,
/// so a push into it allocates no continuation or path.</summary>
and [<Sealed; AllowNullLiteral>] internal Level
    (
        nodes: Node[],
        states: NodeState[],
        path: struct (int * string) list,
        parent: Level,
        lastActive: DateTimeOffset
    ) =
    let name =
        match path with
        | [] -> ""
        | [ struct (_, key) ] -> key
        | _ ->
            path
            |> List.rev
            |> List.map (fun struct (_, key) -> key)
            |> String.concat "\u001f"

    member _.Nodes = nodes
    member _.States = states
    /// The demuxes (index in their level, key) leading here, innermost first.
    member _.Path = path
    /// The substream path of its sink requests: keys outermost first, joined by U+001F ("" at the top).
    member _.Name = name
    /// The level holding this substream's demux (null at the top).
    member _.Parent = parent
    member val LastActive = lastActive with get, set

/// A write to a stage's state.
[<Sealed>]
type internal StateChange(cell: StageCell, state: obj) =
    inherit Change()
    let mutable state = state

    override _.Swap() =
        let current = cell.State
        cell.State <- state
        state <- current

/// A write to a demux's held events.
[<Sealed>]
type internal HeldChange(demuxed: Demuxed, held: DemuxHold list) =
    inherit Change()
    let mutable held = held

    override _.Swap() =
        let current = demuxed.Held
        demuxed.Held <- held
        held <- current

/// A write to a substream's last activity.
[<Sealed>]
type internal ActiveChange(sub: Level, lastActive: DateTimeOffset) =
    inherit Change()
    let mutable lastActive = lastActive

    override _.Swap() =
        let current = sub.LastActive
        sub.LastActive <- lastActive
        lastActive <- current

/// Where a deferred call's async node is: its level and its index there.
[<Struct; NoEquality; NoComparison>]
type internal Location = { Level: Level; Node: int }

/// A write to the calls in flight: call `id` at a location, or absent (a null level). Smaller than an
/// EntryChange of a Location (two per deferred call). It may also carry the write to the state of
/// the call's async node (Attach), the write that goes with starting or ending a call: one change
/// instead of two per push and resume (pipe-core bench). The two writes touch different places, so
/// undoing them together is undoing them in turn.
[<Sealed>]
type internal CallChange(calls: Dictionary<int, Location>, id: int, level: Level, node: int) =
    inherit Change()
    let mutable level = level
    let mutable node = node
    /// The async node's state to swap in (null: no state write attached).
    let mutable state: NodeState = Unchecked.defaultof<NodeState>

    /// Writes the state of the call's async node (at `location`), recording the value it replaces.
    member _.Attach(location: Location, state': NodeState) =
        let states = location.Level.States
        state <- states[location.Node]
        states[location.Node] <- state'

    override _.Swap() =
        let current =
            match calls.TryGetValue id with
            | true, l -> l
            | _ -> { Level = null; Node = 0 }

        if not (isNull (box state)) then
            // The call's location: the one written, or the one being removed.
            let at =
                if isNull level then
                    current
                else
                    { Level = level; Node = node }

            let states = at.Level.States
            let old = states[at.Node]
            states[at.Node] <- state
            state <- old

        if isNull level then
            calls.Remove id |> ignore
        else
            calls[id] <- { Level = level; Node = node }

        level <- current.Level
        node <- current.Node

/// Building and reading run state.
[<RequireQualifiedAccess>]
module internal RunState =
    /// An async node with nothing in its queue (one value: setting it again records no write).
    let idleAsync = AsyncState AsyncQueue.empty

    /// An async node's state with a queue.
    let asyncState (queue: AsyncQueue) =
        if AsyncQueue.isEmpty queue then
            idleAsync
        else
            AsyncState queue

    /// The initial state of a node.
    let initial (node: Node) =
        match node with
        | StageNode s -> StageState(StageCell s.Init)
        | DemuxNode _ -> DemuxState(Demuxed(Dictionary<string, Level>(StringComparer.Ordinal)))
        | AsyncMapNode _ -> idleAsync
        | SinkNode _
        | ExactlyOnceSinkNode _ -> Stateless

    /// The top level of a pipe, its nodes in their initial states.
    let top (nodes: Node list) =
        let nodes = Array.ofList nodes
        Level(nodes, Array.map initial nodes, [], null, DateTimeOffset.MinValue)

    /// A new substream for a key of the demux at index `at` of level `parent`, active now.
    let substream (parent: Level) at (demux: Demux) key now =
        let nodes =
            match demux.Route with
            | Same sub -> sub
            | PerKey route -> route key
            |> Array.ofList

        Level(nodes, Array.map initial nodes, struct (at, key) :: parent.Path, parent, now)

    /// Whether a level holds async calls or events (a substream that does is never dropped).
    let rec busy (states: NodeState[]) =
        states
        |> Array.exists (function
            | AsyncState queue -> not (AsyncQueue.isEmpty queue)
            | DemuxState d -> not d.Held.IsEmpty || d.Subs.Values |> Seq.exists (fun s -> busy s.States)
            | _ -> false)

    /// How many demux substreams a level holds, nested ones included.
    let rec count (states: NodeState[]) =
        states
        |> Array.sumBy (function
            | DemuxState d -> d.Subs.Count + (d.Subs.Values |> Seq.sumBy (fun s -> count s.States))
            | _ -> 0)


    /// The events held in a level, with their hold ids, nested ones included.
    let rec holdsIn (states: NodeState[]) = [
        for state in states do
            match state with
            | AsyncState queue ->
                for entry in AsyncQueue.toList queue do
                    match entry with
                    | Held(hold, event) -> yield hold, event
                    | _ -> ()
            | DemuxState d ->
                for h in d.Held -> h.Hold, h.Event

                for sub in d.Subs.Values do
                    yield! holdsIn sub.States
            | _ -> ()
    ]

    /// A demux's substream keys in ordinal order (the order a broadcast visits them in).
    let sortedKeys (d: Demuxed) =
        let keys = Array.zeroCreate<string> d.Subs.Count
        d.Subs.Keys.CopyTo(keys, 0)
        Array.sortInPlaceWith (fun (a: string) b -> String.CompareOrdinal(a, b)) keys
        keys

    /// A broadcast event reached a demux and `waiting` substreams hold it: it passes on now (true) if
    /// none does and no older event is held there (a Tick always passes); else the demux holds it.
    /// Returns whether it passes and the demux's held events after.
    let reachDemux hold event (waiting: Set<string>) (held: DemuxHold list) =
        match event with
        | Tick -> true, held
        | _ when waiting.IsEmpty && held.IsEmpty -> true, held
        | _ ->
            false,
            held
            @ [
                {
                    Hold = hold
                    Event = event
                    Waiting = waiting
                }
            ]

    /// Substream `key` let held event `hold` through: the events now held by no substream, oldest
    /// first up to the first one still held, go on; returns them and the events still held.
    let letThrough hold key (held: DemuxHold list) =
        let held =
            held
            |> List.map (fun h ->
                if h.Hold = hold then
                    {
                        h with
                            Waiting = h.Waiting.Remove key
                    }
                else
                    h)

        let ready = held |> List.takeWhile (fun h -> h.Waiting.IsEmpty)

        ready, List.skip ready.Length held
