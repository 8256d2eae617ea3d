// The state of a running pipe, per node and per demux substream: stage states, async nodes' queues
// (calls in input order, inputs waiting for a slot, broadcast events held behind them) and the
// events a demux holds. PipeRun interprets a pipe over it.
namespace KFlow

open System

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
    | AsyncState of AsyncQueue

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
    Demuxes: struct (int * string) list
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
        | AsyncMapNode _ -> AsyncState AsyncQueue.empty
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

    /// Whether a level holds async calls or events (a substream that does is never dropped).
    let rec busy (states: NodeState[]) =
        states
        |> Array.exists (function
            | AsyncState queue -> not (AsyncQueue.isEmpty queue)
            | DemuxState d -> not d.Held.IsEmpty || d.Subs |> Map.exists (fun _ s -> busy s.States)
            | _ -> false)

    /// The demux substream path of a sink request: keys outermost first, joined by U+001F.
    let substreamName (path: struct (int * string) list) =
        match path with
        | [] -> ""
        | [ struct (_, key) ] -> key
        | _ ->
            path
            |> List.rev
            |> List.map (fun struct (_, key) -> key)
            |> String.concat "\u001f"

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
                for entry in AsyncQueue.toList queue do
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
