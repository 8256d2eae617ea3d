// The state of a running pipe, per node and per demux substream: stage states, async nodes' queues
// (calls in input order, inputs waiting for a slot, broadcast events held behind them) and the
// events a demux holds. PipeRun interprets a pipe over it.
namespace KFlow

open System

/// One entry of an async node's queue, in input order.
[<NoEquality; NoComparison>]
type internal AsyncEntry =
    /// A started call, with its result once known.
    | Started of id: int * input: Envelope<obj> * result: Result<obj, exn> option
    /// An input waiting for a free slot.
    | Queued of Envelope<obj>
    /// A broadcast event (its hold id) waiting for the entries before it to go on.
    | Held of hold: int * event: Event<obj>

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
    | StageState of obj
    | DemuxState of Demuxed
    | AsyncState of AsyncEntry list

/// A demux's live substreams by key, and the events it holds, oldest first.
and [<NoEquality; NoComparison>] internal Demuxed = {
    Subs: Map<string, Substream>
    Held: DemuxHold list
}

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

/// Building and reading run state.
[<RequireQualifiedAccess>]
module internal RunState =
    /// A demux with no substream and nothing held.
    let noHolds = { Subs = Map.empty; Held = [] }

    /// The initial state of a node.
    let initial (node: Node) =
        match node with
        | StageNode s -> StageState s.Init
        | DemuxNode _ -> DemuxState noHolds
        | AsyncMapNode _ -> AsyncState []
        | SinkNode _
        | ExactlyOnceSinkNode _ -> Stateless

    /// A level's nodes and their initial states.
    let ofNodes (nodes: Node list) =
        let nodes = Array.ofList nodes
        nodes, Array.map initial nodes

    /// A new substream of a demux for a key, active now.
    let substream (demux: Demux) key now =
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

    /// How many calls of a queue are started (answered or not, until they go on).
    let started (queue: AsyncEntry list) =
        queue
        |> List.sumBy (function
            | Started _ -> 1
            | _ -> 0)

    /// Whether an entry waits for a slot.
    let isQueued entry =
        match entry with
        | Queued _ -> true
        | _ -> false

    /// Whether a new input can start its call now: a slot is free and no input waits before it.
    let canStart parallelism (queue: AsyncEntry list) =
        started queue < parallelism && not (List.exists isQueued queue)

    /// Whether a broadcast event must stay behind an entry of an async node's queue: a Flush behind
    /// every entry, a Revoked behind the inputs of its partition; Flush, Revoked and Assigned behind an
    /// event held before them (events keep their order). A Tick is never held.
    let mustFollow (event: Event<obj>) entry =
        match entry, event with
        | Held _, (Flush | Revoked _ | Assigned _) -> true
        | (Started(_, env, _) | Queued env), Flush -> true
        | (Started(_, env, _) | Queued env), Revoked tp ->
            env.Tokens |> List.exists (fun t -> t.Position.TopicPartition = tp)
        | _ -> false

    /// The queue with the event held after the last entry it must follow; None if it passes now.
    let holdIn hold event (queue: AsyncEntry list) =
        List.tryFindIndexBack (mustFollow event) queue
        |> Option.map (fun j -> List.insertAt (j + 1) (Held(hold, event)) queue)

    /// Whether a level holds async calls or events (a substream that does is never dropped).
    let rec busy (states: NodeState[]) =
        states
        |> Array.exists (function
            | AsyncState queue -> not queue.IsEmpty
            | DemuxState d -> not d.Held.IsEmpty || d.Subs |> Map.exists (fun _ s -> busy s.States)
            | _ -> false)

    /// The demux substream path of a sink request: keys outermost first, joined by U+001F.
    let substreamName path =
        match path with
        | [] -> ""
        | [ (_, key) ] -> key
        | _ -> path |> List.rev |> List.map snd |> String.concat "\u001f"

    /// The queue with call `id`'s result recorded.
    let withResult id result (queue: AsyncEntry list) =
        queue
        |> List.map (function
            | Started(c, e, None) when c = id -> Started(c, e, Some result)
            | entry -> entry)

    /// The entries that can go on now (answered calls at the head, in input order, and the events
    /// held behind them), and the rest of the queue.
    let ready (queue: AsyncEntry list) =
        let going =
            queue
            |> List.takeWhile (function
                | Started(_, _, Some _)
                | Held _ -> true
                | _ -> false)

        going, List.skip going.Length queue

    /// Starts waiting inputs, in order, in the slots free under `parallelism`.
    let startWaiting parallelism (start: Envelope<obj> -> AsyncEntry) (queue: AsyncEntry list) =
        (parallelism - started queue, queue)
        ||> List.mapFold (fun free entry ->
            match entry with
            | Queued env when free > 0 -> start env, free - 1
            | entry -> entry, free)
        |> fst

    /// How many demux substreams a level holds, nested ones included.
    let rec count (states: NodeState[]) =
        states
        |> Array.sumBy (function
            | DemuxState d -> d.Subs.Count + (d.Subs |> Seq.sumBy (fun (KeyValue(_, s)) -> count s.States))
            | _ -> 0)


    /// The events held in a level, with their hold ids, nested ones included.
    let rec holdsIn (states: NodeState[]) = [
        for state in states do
            match state with
            | AsyncState queue ->
                for entry in queue do
                    match entry with
                    | Held(hold, event) -> yield hold, event
                    | _ -> ()
            | DemuxState d ->
                for h in d.Held -> h.Hold, h.Event

                for KeyValue(_, sub) in d.Subs do
                    yield! holdsIn sub.States
            | _ -> ()
    ]

    /// A demux node's state (none for another node).
    let demuxed (state: NodeState) =
        match state with
        | DemuxState d -> d
        | _ -> noHolds

    /// A demux node's state with a substream stored under its key.
    let withSub key (sub: Substream) (state: NodeState) =
        let d = demuxed state
        DemuxState { d with Subs = Map.add key sub d.Subs }

    /// A broadcast event reached a demux and `waiting` substreams hold it: it passes on now (true) if
    /// none does and no older event is held there (a Tick always passes); else the demux holds it.
    let reachDemux hold event (waiting: Set<string>) (d: Demuxed) =
        match event with
        | Tick -> true, d
        | _ when waiting.IsEmpty && d.Held.IsEmpty -> true, d
        | _ ->
            false,
            {
                d with
                    Held =
                        d.Held
                        @ [
                            {
                                Hold = hold
                                Event = event
                                Waiting = waiting
                            }
                        ]
            }

    /// Substream `key` let held event `hold` through: the events now held by no substream, oldest
    /// first up to the first one still held, go on; returns them and the demux holding the rest.
    let letThrough hold key (d: Demuxed) =
        let held =
            d.Held
            |> List.map (fun h ->
                if h.Hold = hold then
                    {
                        h with
                            Waiting = h.Waiting.Remove key
                    }
                else
                    h)

        let ready = held |> List.takeWhile (fun h -> h.Waiting.IsEmpty)

        ready,
        {
            d with
                Held = List.skip ready.Length held
        }
