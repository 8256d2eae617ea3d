// The offset ledger's implementation. Per partition: delivered offsets in order with their open
// part counts; the commit point is the first still-open offset.
// NOTE: a first, simple persistent representation (Map of open offsets); the hot-path work
// replaces it with a faster one behind the same signature.
namespace KFlow

[<Struct>]
type Token =
    { Position: Position
      Epoch: int }

type LedgerError =
    | NotAssigned of TopicPartition
    | StaleEpoch of token: Token * currentEpoch: int
    | NotOpen of Token
    | OutOfOrder of delivered: Position * nextExpectedAtLeast: int64
    | InvalidParts of token: Token * parts: int

type internal PartitionState =
    { Epoch: int
      /// The lowest offset the next delivery may have.
      NextAtLeast: int64
      /// Open offsets and how many of their parts are open.
      Open: Map<int64, int> }

[<Sealed>]
type Ledger internal (partitions: Map<TopicPartition, PartitionState>, nextEpoch: int) =
    member internal _.Partitions = partitions
    member internal _.NextEpoch = nextEpoch

[<RequireQualifiedAccess>]
module Ledger =
    let empty = Ledger(Map.empty, 1)

    let assign (tp: TopicPartition) (startOffset: int64) (ledger: Ledger) =
        if startOffset < 0L then
            invalidArgWith "startOffset" (sprintf "The start offset of %O must be ≥ 0 (got %d)." tp startOffset)
        let state = { Epoch = ledger.NextEpoch; NextAtLeast = startOffset; Open = Map.empty }
        Ledger(Map.add tp state ledger.Partitions, ledger.NextEpoch + 1)

    let revoke (tp: TopicPartition) (ledger: Ledger) =
        Ledger(Map.remove tp ledger.Partitions, ledger.NextEpoch)

    let epoch (tp: TopicPartition) (ledger: Ledger) =
        match Map.tryFind tp ledger.Partitions with
        | Some s -> ValueSome s.Epoch
        | None -> ValueNone

    let private update tp state (ledger: Ledger) =
        Ledger(Map.add tp state ledger.Partitions, ledger.NextEpoch)

    let deliver (position: Position) (ledger: Ledger) =
        let tp = position.TopicPartition
        match Map.tryFind tp ledger.Partitions with
        | None -> Error(NotAssigned tp)
        | Some s when position.Offset < s.NextAtLeast -> Error(OutOfOrder(position, s.NextAtLeast))
        | Some s ->
            let s' = { s with NextAtLeast = position.Offset + 1L; Open = Map.add position.Offset 1 s.Open }
            Ok(struct (update tp s' ledger, { Position = position; Epoch = s.Epoch }))

    let private withOpen (token: Token) (ledger: Ledger) f =
        let tp = token.Position.TopicPartition
        match Map.tryFind tp ledger.Partitions with
        | None -> Error(NotAssigned tp)
        | Some s when s.Epoch <> token.Epoch -> Error(StaleEpoch(token, s.Epoch))
        | Some s ->
            match Map.tryFind token.Position.Offset s.Open with
            | None -> Error(NotOpen token)
            | Some parts ->
                let remaining = f parts
                let open' =
                    if remaining = 0 then Map.remove token.Position.Offset s.Open
                    else Map.add token.Position.Offset remaining s.Open
                Ok(update tp { s with Open = open' } ledger)

    let fork (parts: int) (token: Token) (ledger: Ledger) =
        if parts < 0 then Error(InvalidParts(token, parts))
        else withOpen token ledger (fun open' -> open' - 1 + parts)

    let complete (token: Token) (ledger: Ledger) = withOpen token ledger (fun parts -> parts - 1)

    let private pointOf (s: PartitionState) =
        if Map.isEmpty s.Open then s.NextAtLeast else Map.minKeyValue s.Open |> fst

    let commitPoint (tp: TopicPartition) (ledger: Ledger) =
        match Map.tryFind tp ledger.Partitions with
        | Some s -> ValueSome(pointOf s)
        | None -> ValueNone

    let commitPoints (ledger: Ledger) =
        ledger.Partitions |> Map.toList |> List.map (fun (tp, s) -> tp, pointOf s)

    let openCount (tp: TopicPartition) (ledger: Ledger) =
        match Map.tryFind tp ledger.Partitions with
        | Some s -> s.Open.Count
        | None -> 0

    let assigned (ledger: Ledger) = ledger.Partitions |> Map.toList |> List.map fst
