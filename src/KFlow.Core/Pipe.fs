// A pipe: stages composed into a plain, walkable value, interpreted by the test driver or the
// Kafka runtime. Values are boxed inside nodes; the typed Pipe<'i,'o> keeps composition type-safe.
namespace KFlow

open System
open System.Threading.Tasks

[<Sealed>]
type Sunk private () = class end

type DemuxOptions = { IdleAfter: TimeSpan }

[<NoEquality; NoComparison>]
type Node =
    | StageNode of Stage<obj, obj>
    | DemuxNode of Demux
    | AsyncMapNode of name: string * parallelism: int * run: (obj -> Task<obj>)
    | SinkNode of name: string * write: (obj -> Task) * pipelining: SinkPipelining
    | ExactlyOnceSinkNode of
        name: string *
        store: AppliedOffsetStore *
        write: (Position list -> obj -> Task) *
        pipelining: SinkPipelining

and [<NoEquality; NoComparison>] Demux = {
    Key: Envelope<obj> -> string
    Options: DemuxOptions
    Route: Route
}

and [<NoEquality; NoComparison>] Route =
    | Same of Node list
    | PerKey of (string -> Node list)

[<Sealed; NoEquality; NoComparison>]
type Pipe<'i, 'o> internal (root: Node list, scopes: Scope list) =
    /// The top-level nodes, before any open split.
    member internal _.Root = root
    /// The splits not joined yet, innermost first.
    member internal _.Scopes = scopes

    /// The nodes, every open split joined at the end.
    member internal _.Nodes =
        let close (nodes: Node list) (scope: Scope) =
            scope.Outer
            @ [
                DemuxNode {
                    Key = scope.Key
                    Options = scope.Options
                    Route = Same nodes
                }
            ]

        match scopes with
        | [] -> root
        | innermost :: outer -> (close root innermost, outer) ||> List.fold close

/// A split not joined yet: its key, options and the nodes before it at its level.
and [<NoEquality; NoComparison>] internal Scope = {
    Key: Envelope<obj> -> string
    Options: DemuxOptions
    Outer: Node list
}

[<RequireQualifiedAccess>]
module Pipe =
    let source<'a> : Pipe<'a, 'a> = Pipe<'a, 'a>([], [])

    /// Appends a node to the innermost open split (or the top level).
    let private append (node: Node) (pipe: Pipe<'i, 'a>) : Pipe<'i, 'b> =
        Pipe<'i, 'b>(pipe.Root @ [ node ], pipe.Scopes)

    let via (stage: Stage<'a, 'b>) (pipe: Pipe<'i, 'a>) : Pipe<'i, 'b> =
        append (StageNode(Stage.boxed stage)) pipe

    let map (f: 'a -> 'b) pipe = via (Stage.map f) pipe
    let mapEnvelope (f: Envelope<'a> -> 'b) pipe = via (Stage.mapEnvelope f) pipe
    let filter (predicate: 'a -> bool) pipe = via (Stage.filter predicate) pipe
    let unfold (f: 'a -> 'b list) pipe = via (Stage.unfold f) pipe
    let stateful name (init: 's) step pipe = via (Stage.create name init step) pipe
    let aggregate (aggregator: Aggregator<'a, 'b>) pipe = via (Aggregator.stage aggregator) pipe

    let assembleChunks (chunkOf: 'a -> Chunk<'p>) (combine: 'p list -> 'b) pipe =
        via (Chunks.assemble chunkOf combine) pipe

    let demuxOptions = {
        IdleAfter = TimeSpan.FromSeconds 60.0
    }

    let private checkOptions (options: DemuxOptions) =
        if options.IdleAfter <= TimeSpan.Zero then
            invalidArgWith
                "options"
                "DemuxOptions.IdleAfter must be positive; it is how long an idle substream is kept."

    let demuxWith
        options
        (key: 'a -> string)
        (sub: Pipe<'a, 'a> -> Pipe<'a, 'b>)
        (pipe: Pipe<'i, 'a>)
        : Pipe<'i, 'b> =
        checkOptions options

        let demux = {
            Key = (fun e -> key (unbox<'a> e.Value))
            Options = options
            Route = Same (sub source).Nodes
        }

        append (DemuxNode demux) pipe

    let demux key sub pipe = demuxWith demuxOptions key sub pipe

    let demuxByKeyWith options (sub: Pipe<'a, 'a> -> Pipe<'a, 'b>) (pipe: Pipe<'i, 'a>) : Pipe<'i, 'b> =
        checkOptions options

        let demux = {
            Key = (fun e -> e.Key)
            Options = options
            Route = Same (sub source).Nodes
        }

        append (DemuxNode demux) pipe

    let demuxByKey sub pipe = demuxByKeyWith demuxOptions sub pipe

    /// <summary>The nodes of a routeDependent route, refused (InvalidOperationException) when they hold
    /// an exactly-once sink: a route is built on its key's first message, after the runtime read the
    /// applied offsets of the pipe's exactly-once sinks (on assignment), so its sink's would be missed.</summary>
    let private routeNodes (key: string) (nodes: Node list) =
        let rec exactlyOnce (nodes: Node list) =
            nodes
            |> List.tryPick (fun node ->
                match node with
                | ExactlyOnceSinkNode(name, _, _, _) -> Some name
                | DemuxNode { Route = Same sub } -> exactlyOnce sub
                | _ -> None)

        match exactlyOnce nodes with
        | Some sink ->
            raise (
                InvalidOperationException(
                    $"The routeDependent route of key '{key}' holds the exactly-once sink '{sink}'. A route is \
                      built on its key's first message, after the runtime read the applied offsets of the \
                      pipe's exactly-once sinks (on assignment), so this sink's applied offsets would be \
                      missed. Put the exactly-once sink after routeDependent (e.g. route to values carrying \
                      their target, then one sink), or use Pipe.demux, whose sub-pipe is seen at start."
                )
            )
        | None -> nodes

    let routeDependent
        (key: 'a -> string)
        (route: string -> Pipe<'a, 'a> -> Pipe<'a, 'b>)
        (pipe: Pipe<'i, 'a>)
        : Pipe<'i, 'b> =
        let demux = {
            Key = (fun e -> key (unbox<'a> e.Value))
            Options = demuxOptions
            Route = PerKey(fun k -> routeNodes k (route k source).Nodes)
        }

        append (DemuxNode demux) pipe

    let mfd
        (f: 'a -> (string * 'b) option)
        (sub: Pipe<'b, 'b> -> Pipe<'b, 'c>)
        (pipe: Pipe<'i, 'a>)
        : Pipe<'i, 'c> =
        let keyed: Pipe<'i, 'b> = via (Stage.mapFilterKey f) pipe

        let demux = {
            Key = (fun e -> e.Key)
            Options = demuxOptions
            Route = Same (sub source).Nodes
        }

        append (DemuxNode demux) keyed

    let mapAsync (parallelism: int) (f: 'a -> Task<'b>) (pipe: Pipe<'i, 'a>) : Pipe<'i, 'b> =
        if parallelism < 1 then
            invalidArgWith "parallelism" (sprintf "mapAsync's parallelism must be ≥ 1 (got %d)." parallelism)

        let run (value: obj) : Task<obj> = task {
            let! b = f (unbox<'a> value)
            return box b
        }

        append (AsyncMapNode("mapAsync", parallelism, run)) pipe

    let private checkPipelining (pipelining: SinkPipelining) =
        if obj.ReferenceEquals(pipelining, null) then
            invalidArgWith
                "pipelining"
                "Give the sink's pipelining (SinkPipelining.sequential for one write at a time)."

        SinkPipelining.create pipelining.InFlight pipelining.Reserve pipelining.Release
        |> ignore

    let sinkWith
        (pipelining: SinkPipelining)
        (name: string)
        (write: 'a -> Task)
        (pipe: Pipe<'i, 'a>)
        : Pipe<'i, Sunk> =
        if String.IsNullOrWhiteSpace name then
            invalidArgWith "name" "A sink needs a non-empty name; it names the sink in reports and failures."

        checkPipelining pipelining
        append (SinkNode(name, (fun v -> write (unbox<'a> v)), pipelining)) pipe

    let sink (name: string) (write: 'a -> Task) (pipe: Pipe<'i, 'a>) : Pipe<'i, Sunk> =
        sinkWith SinkPipelining.sequential name write pipe

    let sinkExactlyOnceWith
        (pipelining: SinkPipelining)
        (name: string)
        (store: AppliedOffsetStore)
        (write: Position list -> 'a -> Task)
        (pipe: Pipe<'i, 'a>)
        : Pipe<'i, Sunk> =
        if String.IsNullOrWhiteSpace name then
            invalidArgWith "name" "A sink needs a non-empty name; it names the sink in reports and failures."

        if obj.ReferenceEquals(store, null) || String.IsNullOrWhiteSpace store.GroupId then
            invalidArgWith
                "store"
                "An exactly-once sink needs an applied-offset store with the workflow's consumer group."

        checkPipelining pipelining

        // `write positions` is applied when the request is made (on the partition's loop, while it is
        // owned), so a write can take its claims then; the result is called for each try.
        let node (positions: Position list) =
            let writeValue = write positions
            fun (v: obj) -> writeValue (unbox<'a> v)

        append (ExactlyOnceSinkNode(name, store, node, pipelining)) pipe

    let sinkExactlyOnce name store (write: Position list -> 'a -> Task) pipe =
        sinkExactlyOnceWith SinkPipelining.sequential name store write pipe

    let split (key: 'a -> string) (pipe: Pipe<'i, 'a>) : Pipe<'i, 'a> =
        let scope = {
            Key = (fun e -> key (unbox<'a> e.Value))
            Options = demuxOptions
            Outer = pipe.Root
        }

        Pipe<'i, 'a>([], scope :: pipe.Scopes)

    let splitByKey (pipe: Pipe<'i, 'a>) : Pipe<'i, 'a> =
        let scope = {
            Key = (fun e -> e.Key)
            Options = demuxOptions
            Outer = pipe.Root
        }

        Pipe<'i, 'a>([], scope :: pipe.Scopes)

    let internal routeSplit
        (key: 'a -> string)
        (route: string -> Pipe<'i, 'a> -> Pipe<'i, 'b>)
        (pipe: Pipe<'i, 'a>)
        : Pipe<'i, 'b> =
        let nodesOf (k: string) =
            // The empty pipe only carries the type: route's nodes start from 'a values.
            let routed = route k (Pipe<'i, 'a>([], []))

            if not routed.Scopes.IsEmpty then
                invalidArgWith
                    "route"
                    $"The route of key '{k}' left a split open; join every split it opens inside the route."

            routeNodes k routed.Root

        let demux = {
            Key = (fun e -> key (unbox<'a> e.Value))
            Options = demuxOptions
            Route = PerKey nodesOf
        }

        append (DemuxNode demux) pipe

    let internal timed enabled record (pipe: Pipe<'i, 'o>) : Pipe<'i, 'o> =
        let rec nodes (ns: Node list) = ns |> List.map node

        and node n =
            match n with
            | StageNode s -> StageNode(Stage.timed enabled record s)
            | DemuxNode d ->
                let route =
                    match d.Route with
                    | Same sub -> Same(nodes sub)
                    | PerKey build -> PerKey(fun key -> nodes (build key))

                DemuxNode { d with Route = route }
            | other -> other

        Pipe<'i, 'o>(nodes pipe.Nodes, [])

    let join (pipe: Pipe<'i, 'a>) : Pipe<'i, 'a> =
        match pipe.Scopes with
        | [] ->
            invalidArgWith "pipe" "Pipe.join needs an open Pipe.split before it; every join closes one split."
        | scope :: outer ->
            let demux =
                DemuxNode {
                    Key = scope.Key
                    Options = scope.Options
                    Route = Same pipe.Root
                }

            Pipe<'i, 'a>(scope.Outer @ [ demux ], outer)

    let nodes (pipe: Pipe<'i, 'o>) = pipe.Nodes

    let appliedOffsetStores (pipe: Pipe<'i, 'o>) =
        let rec walk (nodes: Node list) =
            nodes
            |> List.collect (fun node ->
                match node with
                | ExactlyOnceSinkNode(_, store, _, _) -> [ store ]
                | DemuxNode { Route = Same sub } -> walk sub
                | _ -> [])

        (walk pipe.Nodes, [])
        ||> List.foldBack (fun store kept ->
            if kept |> List.exists (fun k -> obj.ReferenceEquals(k, store)) then
                kept
            else
                store :: kept)

    let describe (pipe: Pipe<'i, 'o>) =
        let lines = Text.StringBuilder()

        let rec walk indent (nodes: Node list) =
            for node in nodes do
                let pad = String(' ', indent * 2)

                match node with
                | StageNode s -> lines.AppendLine(pad + Stage.name s) |> ignore
                | AsyncMapNode(name, p, _) ->
                    lines.AppendLine(sprintf "%s%s (parallelism %d)" pad name p) |> ignore
                | SinkNode(name, _, _) -> lines.AppendLine(sprintf "%ssink %s" pad name) |> ignore
                | ExactlyOnceSinkNode(name, _, _, _) ->
                    lines.AppendLine(sprintf "%ssink %s (exactly once)" pad name) |> ignore
                | DemuxNode d ->
                    match d.Route with
                    | Same sub ->
                        lines.AppendLine(sprintf "%sdemux (idle after %O)" pad d.Options.IdleAfter)
                        |> ignore

                        walk (indent + 1) sub
                    | PerKey _ ->
                        lines.AppendLine(sprintf "%srouteDependent (idle after %O)" pad d.Options.IdleAfter)
                        |> ignore

                    lines.AppendLine(pad + "join") |> ignore

        walk 0 pipe.Nodes
        lines.ToString()
