// The offset ledger's implementation: per partition, 64-offset bitmaps of open offsets kept in a
// radix ring sized by the open window (not by absolute offsets), plus a cached commit point. The ring
// is written in place and its older versions kept by rerooting (OffsetRing.fs), so a scattered
// complete costs one small change instead of a copied path of 16-slot nodes.
namespace KFlow

open System.Numerics

[<Struct>]
type Token = { Position: Position; Epoch: int }

type LedgerError =
    | NotAssigned of TopicPartition
    | StaleEpoch of token: Token * currentEpoch: int
    | NotOpen of Token
    | OutOfOrder of delivered: Position * nextExpectedAtLeast: int64
    | InvalidParts of token: Token * parts: int

/// What a partition's deliveries and completes seldom change, kept apart so that a Ledger (a value
/// per deliver and per complete) stays small: 80 bytes instead of 104 (bench --only pipe-core).
[<NoEquality; NoComparison>]
type internal PartitionInfo = {
    TopicPartition: TopicPartition
    Epoch: int
    /// The ring holds 16^Depth blocks; every block it holds lies in [CommitPoint/64, that + 16^Depth).
    Depth: int
    /// Open offsets with more than one open part.
    Multi: Map<int64, int>
}

/// One assigned partition. Open offsets are the set bits of the tail block's mask (the block being
/// delivered into) and of the ring's masks (earlier blocks); an open offset has one part unless
/// Multi says otherwise.
[<Struct; NoEquality; NoComparison>]
type internal PartitionState = {
    Info: PartitionInfo
    /// The lowest offset the next delivery may have.
    NextAtLeast: int64
    /// The first open offset, or NextAtLeast when none is open.
    CommitPoint: int64
    OpenCount: int
    /// The open offsets of the tail block: the block of the last delivered offset (TailBlock), which
    /// NextAtLeast gives (no field: 8 bytes less per Ledger). The ring's blocks all lie before it.
    TailMask: uint64
    /// The ring's version (null: empty).
    Ring: RingVersion
} with

    member s.TopicPartition = s.Info.TopicPartition
    member s.Epoch = s.Info.Epoch
    member s.Depth = s.Info.Depth
    member s.Multi = s.Info.Multi

    /// The tail block: that of the last delivered offset (while TailMask is 0, any block the ring
    /// does not hold would do).
    member s.TailBlock = (s.NextAtLeast - 1L) >>> 6

/// The partitions after the first and the next epoch: what only assign and revoke change.
[<Sealed; NoEquality; NoComparison>]
type internal LedgerShape(count: int, rest: PartitionState[], nextEpoch: int) =
    member _.Count = count
    member _.Rest = rest
    member _.NextEpoch = nextEpoch

/// The partitions, sorted by topic-partition: the first held inline (a struct field), the others in
/// the shape. A runtime's ledger holds one partition, so a deliver or complete allocates one object
/// (the new Ledger) instead of three (Ledger, array, state): measured by bench --only pipe-core.
[<Sealed>]
type Ledger internal (first: PartitionState, shape: LedgerShape) =
    // Written only by an OwnedLedger, on the one Ledger it owns (SetAt); a Ledger value never changes.
    let mutable first = first
    member internal _.Shape = shape
    member internal _.Count = shape.Count
    member internal _.First = first
    /// Partitions 1 .. count-1.
    member internal _.Rest = shape.Rest
    member internal _.NextEpoch = shape.NextEpoch

    new(count: int, first: PartitionState, rest: PartitionState[], nextEpoch: int) =
        Ledger(first, LedgerShape(count, rest, nextEpoch))

    /// Partition i (0 ≤ i < count).
    member internal _.At(i: int) =
        if i = 0 then first else shape.Rest.[i - 1]

    /// Replaces partition i in place: only for the Ledger an OwnedLedger owns (its arrays are its own).
    member internal _.SetAt(i: int, s: PartitionState) =
        if i = 0 then first <- s else shape.Rest.[i - 1] <- s

    /// All partitions, sorted.
    member internal _.Partitions =
        if shape.Count = 0 then
            [||]
        else
            Array.append [| first |] shape.Rest

    /// The ledger of the given sorted partitions.
    static member internal OfArray(partitions: PartitionState[], nextEpoch: int) =
        if partitions.Length = 0 then
            Ledger(0, Unchecked.defaultof<_>, [||], nextEpoch)
        else
            Ledger(
                partitions.Length,
                partitions.[0],
                Array.sub partitions 1 (partitions.Length - 1),
                nextEpoch
            )

[<RequireQualifiedAccess>]
module Ledger =
    let empty = Ledger.OfArray([||], 1)

    let inline private sameTp (a: TopicPartition) (b: TopicPartition) =
        a.Partition = b.Partition && System.String.Equals(a.Topic, b.Topic)

    /// The index of a partition, or -1.
    let private indexOf (tp: TopicPartition) (ledger: Ledger) =
        if ledger.Count = 0 then
            -1
        elif sameTp ledger.First.Info.TopicPartition tp then
            0
        else
            let rest = ledger.Rest
            let mutable i = 0
            let mutable found = -1

            while found < 0 && i < rest.Length do
                if sameTp rest.[i].TopicPartition tp then
                    found <- i + 1

                i <- i + 1

            found

    let private replaceAt (i: int) (s: PartitionState) (ledger: Ledger) =
        if i = 0 then
            Ledger(s, ledger.Shape)
        else
            let a = ledger.Rest.Clone() :?> PartitionState[]
            a.[i - 1] <- s
            Ledger(ledger.Count, ledger.First, a, ledger.NextEpoch)

    let private without (tp: TopicPartition) (partitions: PartitionState[]) =
        partitions |> Array.filter (fun s -> not (sameTp s.TopicPartition tp))

    let assign (tp: TopicPartition) (startOffset: int64) (ledger: Ledger) =
        if startOffset < 0L then
            invalidArgWith
                "startOffset"
                (sprintf
                    "The start offset of %O must be ≥ 0 (got %d); pass the committed offset."
                    tp
                    startOffset)

        let state = {
            Info = {
                TopicPartition = tp
                Epoch = ledger.NextEpoch
                Depth = 1
                Multi = Map.empty
            }
            NextAtLeast = startOffset
            CommitPoint = startOffset
            OpenCount = 0
            TailMask = 0UL
            Ring = null
        }

        let partitions =
            Array.append (without tp ledger.Partitions) [| state |]
            |> Array.sortWith (fun a b -> compare a.TopicPartition b.TopicPartition)

        Ledger.OfArray(partitions, ledger.NextEpoch + 1)

    let revoke (tp: TopicPartition) (ledger: Ledger) =
        if indexOf tp ledger < 0 then
            ledger
        else
            Ledger.OfArray(without tp ledger.Partitions, ledger.NextEpoch)

    let epoch (tp: TopicPartition) (ledger: Ledger) =
        match indexOf tp ledger with
        | -1 -> ValueNone
        | i -> ValueSome (ledger.At i).Info.Epoch

    /// A ring write: in place with nothing recorded for an OwnedLedger, else a new version.
    let inline private ringSet (inPlace: bool) level slot mask ring =
        if inPlace then
            RingVersion.setInPlace level slot mask ring
        else
            RingVersion.set level slot mask ring

    /// The ring of s with the tail block (non-empty) moved into it, growing the ring when the
    /// window from the commit block to the tail block no longer fits.
    let private pushTail (inPlace: bool) (s: PartitionState) : struct (int * RingVersion) =
        let low = s.CommitPoint >>> 6
        let span = s.TailBlock - low
        let capacity = 1L <<< (Ring.Bits * s.Depth)

        if span < capacity then
            struct (s.Depth, ringSet inPlace (s.Depth - 1) (s.TailBlock &&& (capacity - 1L)) s.TailMask s.Ring)
        else
            let mutable depth = s.Depth + 1

            while span >= (1L <<< (Ring.Bits * depth)) do
                depth <- depth + 1

            let capacity' = 1L <<< (Ring.Bits * depth)

            // A new ring of its own: its nodes are seen by no other version, so no write is recorded.
            let root =
                RingVersion.read s.Ring (fun old ->
                    let root = ref null

                    Ring.iter
                        (fun slot mask ->
                            let block = low + ((slot - low) &&& (capacity - 1L))

                            root.Value <-
                                Ring.set null root.Value (depth - 1) (block &&& (capacity' - 1L)) mask)
                        old
                        (s.Depth - 1)
                        0L

                    root.Value)

            let root =
                Ring.set null root (depth - 1) (s.TailBlock &&& (capacity' - 1L)) s.TailMask

            struct (depth, RingVersion.fresh root)

    /// The info with the ring's depth replaced (the same object for the same depth).
    let private withDepth (depth: int) (info: PartitionInfo) =
        if info.Depth = depth then
            info
        else
            { info with Depth = depth }

    /// The info with the open parts replaced (the same object for the same map).
    let private withMulti (multi: Map<int64, int>) (info: PartitionInfo) =
        if obj.ReferenceEquals(info.Multi, multi) then
            info
        else
            { info with Multi = multi }

    /// A partition's state after delivering `position` (ring writes in place when `inPlace`).
    let private deliverTo (inPlace: bool) (s: PartitionState) (position: Position) =
        let offset = position.Offset

        if offset < s.NextAtLeast then
            Error(OutOfOrder(position, s.NextAtLeast))
        else
            let block = offset >>> 6
            let bit = 1UL <<< int (offset &&& 63L)
            let commitPoint = if s.OpenCount = 0 then offset else s.CommitPoint

            if block = s.TailBlock then
                Ok {
                    s with
                        NextAtLeast = offset + 1L
                        CommitPoint = commitPoint
                        OpenCount = s.OpenCount + 1
                        TailMask = s.TailMask ||| bit
                }
            elif s.TailMask = 0UL then
                Ok {
                    s with
                        NextAtLeast = offset + 1L
                        CommitPoint = commitPoint
                        OpenCount = s.OpenCount + 1
                        TailMask = bit
                }
            else
                let struct (depth, ring) = pushTail inPlace s

                Ok {
                    s with
                        NextAtLeast = offset + 1L
                        CommitPoint = commitPoint
                        OpenCount = s.OpenCount + 1
                        TailMask = bit
                        Info = withDepth depth s.Info
                        Ring = ring
                }

    /// Delivers `position` into its partition; `write` stores the partition's new state (into a new
    /// Ledger value, or in place) and gives the result.
    let inline private deliverWith
        (inPlace: bool)
        ([<InlineIfLambda>] write: int -> PartitionState -> Result<'r, LedgerError>)
        (position: Position)
        (ledger: Ledger)
        =
        let tp = position.TopicPartition

        match indexOf tp ledger with
        | -1 -> Error(NotAssigned tp)
        | i ->
            match deliverTo inPlace (ledger.At i) position with
            | Ok s' -> write i s'
            | Error e -> Error e

    let deliver (position: Position) (ledger: Ledger) =
        deliverWith
            false
            (fun i s' ->
                Ok(
                    struct (replaceAt i s' ledger,
                            {
                                Position = position
                                Epoch = s'.Epoch
                            })
                ))
            position
            ledger

    /// The mask of an open block (ring or tail); 0 for a block outside the window.
    let private maskOf (s: PartitionState) (block: int64) =
        if block = s.TailBlock then
            s.TailMask
        else
            let capacity = 1L <<< (Ring.Bits * s.Depth)

            if block - (s.CommitPoint >>> 6) >= capacity then
                0UL
            else
                RingVersion.read s.Ring (fun root -> Ring.get root (s.Depth - 1) (block &&& (capacity - 1L)))

    /// The first open offset above `offset` in s, which must still hold an open offset above it.
    let private nextOpenAbove (s: PartitionState) (offset: int64) =
        let block = offset >>> 6
        let bitIndex = int (offset &&& 63L)

        let above =
            if bitIndex = 63 then
                0UL
            else
                maskOf s block &&& (System.UInt64.MaxValue <<< (bitIndex + 1))

        if above <> 0UL then
            (block <<< 6) + int64 (BitOperations.TrailingZeroCount above)
        elif block = s.TailBlock then
            s.NextAtLeast
        else
            let capacity = 1L <<< (Ring.Bits * s.Depth)
            let level = s.Depth - 1

            RingVersion.read s.Ring (fun root ->
                let found = Ring.firstFrom root level 0L ((block + 1L) &&& (capacity - 1L))

                let slot =
                    if found >= 0L then
                        found
                    else
                        Ring.firstFrom root level 0L 0L

                if slot >= 0L then
                    let block' = block + ((slot - block) &&& (capacity - 1L))
                    let mask = Ring.get root level slot
                    (block' <<< 6) + int64 (BitOperations.TrailingZeroCount mask)
                else
                    (s.TailBlock <<< 6) + int64 (BitOperations.TrailingZeroCount s.TailMask))

    /// Replaces the open parts of an open offset (whose block's mask is `mask`) with `remaining` (≥ 0).
    let private withParts
        (inPlace: bool)
        (s: PartitionState)
        (offset: int64)
        (mask: uint64)
        (parts: int)
        (remaining: int)
        =
        if remaining > 0 then
            if remaining = parts then
                s
            elif remaining = 1 then
                {
                    s with
                        Info = withMulti (Map.remove offset s.Multi) s.Info
                }
            else
                {
                    s with
                        Info = withMulti (Map.add offset remaining s.Multi) s.Info
                }
        else
            let block = offset >>> 6
            let bit = 1UL <<< int (offset &&& 63L)
            let multi = if parts > 1 then Map.remove offset s.Multi else s.Multi

            if s.OpenCount = 1 then
                {
                    s with
                        CommitPoint = s.NextAtLeast
                        OpenCount = 0
                        TailMask = 0UL
                        Ring = null
                        Info = s.Info |> withDepth 1 |> withMulti multi
                }
            else
                let s' =
                    if block = s.TailBlock then
                        {
                            s with
                                OpenCount = s.OpenCount - 1
                                TailMask = s.TailMask &&& ~~~bit
                                Info = withMulti multi s.Info
                        }
                    else
                        let capacity = 1L <<< (Ring.Bits * s.Depth)
                        let slot = block &&& (capacity - 1L)

                        {
                            s with
                                OpenCount = s.OpenCount - 1
                                Ring = ringSet inPlace (s.Depth - 1) slot (mask &&& ~~~bit) s.Ring
                                Info = withMulti multi s.Info
                        }

                if offset = s.CommitPoint then
                    {
                        s' with
                            CommitPoint = nextOpenAbove s' offset
                    }
                else
                    s'

    /// A partition's state after `change` (the new number of parts from the current one) is applied
    /// to an open token of it (ValueNone: unchanged). Ring writes in place when `inPlace`.
    let inline private changeIn
        (inPlace: bool)
        (token: Token)
        (s: PartitionState)
        ([<InlineIfLambda>] change: int -> int)
        =
        let offset = token.Position.Offset

        // Offsets outside [commit point, next expected) are not open; inside, the block's mask says.
        let mask =
            if offset < s.CommitPoint || offset >= s.NextAtLeast then
                0UL
            else
                maskOf s (offset >>> 6)

        if s.Epoch <> token.Epoch then
            Error(StaleEpoch(token, s.Epoch))
        elif mask &&& (1UL <<< int (offset &&& 63L)) = 0UL then
            Error(NotOpen token)
        else
            let parts =
                if s.Multi.IsEmpty then
                    1
                else
                    match s.Multi.TryGetValue offset with
                    | true, n -> n
                    | _ -> 1

            let remaining = change parts

            if remaining > 0 && remaining = parts then
                Ok ValueNone
            else
                Ok(ValueSome(withParts inPlace s offset mask parts remaining))

    /// Applies `change` to an open token; `write` stores its partition's new state (into a new Ledger
    /// value, or in place) and gives what is returned, `unchanged` what is returned when nothing changed.
    let inline private changeWith
        (inPlace: bool)
        ([<InlineIfLambda>] write: int -> PartitionState -> 'l)
        (unchanged: 'l)
        (token: Token)
        (ledger: Ledger)
        ([<InlineIfLambda>] change: int -> int)
        =
        let tp = token.Position.TopicPartition

        match indexOf tp ledger with
        | -1 -> Error(NotAssigned tp)
        | i ->
            match changeIn inPlace token (ledger.At i) change with
            | Ok(ValueSome s') -> Ok(write i s')
            | Ok ValueNone -> Ok unchanged
            | Error e -> Error e

    /// Splits one part into `parts` through `change` (a changeWith), refusing a negative count.
    let inline private forkWith
        ([<InlineIfLambda>] change: (int -> int) -> Result<'l, LedgerError>)
        parts
        token
        =
        if parts < 0 then
            Error(InvalidParts(token, parts))
        else
            change (fun current -> current - 1 + parts)

    /// Applies `change` to an open token of a ledger value.
    let inline private changeParts (token: Token) (ledger: Ledger) ([<InlineIfLambda>] change: int -> int) =
        changeWith false (fun i s' -> replaceAt i s' ledger) ledger token ledger change

    let fork (parts: int) (token: Token) (ledger: Ledger) =
        forkWith (changeParts token ledger) parts token

    let complete (token: Token) (ledger: Ledger) =
        changeParts token ledger (fun current -> current - 1)

    let commitPoint (tp: TopicPartition) (ledger: Ledger) =
        match indexOf tp ledger with
        | -1 -> ValueNone
        | i -> ValueSome (ledger.At i).CommitPoint

    let commitPoints (ledger: Ledger) =
        ledger.Partitions
        |> Array.map (fun s -> s.TopicPartition, s.CommitPoint)
        |> List.ofArray

    let openCount (tp: TopicPartition) (ledger: Ledger) =
        match indexOf tp ledger with
        | -1 -> 0
        | i -> (ledger.At i).OpenCount

    let openOffsets (tp: TopicPartition) (ledger: Ledger) =
        match indexOf tp ledger with
        | -1 -> []
        | i ->
            let s = ledger.At i
            let low = s.CommitPoint >>> 6
            let capacity = 1L <<< (Ring.Bits * s.Depth)
            let blocks = ResizeArray<struct (int64 * uint64)>()

            RingVersion.read s.Ring (fun root ->
                Ring.iter
                    (fun slot mask -> blocks.Add(struct (low + ((slot - low) &&& (capacity - 1L)), mask)))
                    root
                    (s.Depth - 1)
                    0L)

            if s.TailMask <> 0UL then
                blocks.Add(struct (s.TailBlock, s.TailMask))

            [
                for struct (block, mask) in blocks |> Seq.sortBy (fun struct (b, _) -> b) do
                    for bit in 0..63 do
                        if mask &&& (1UL <<< bit) <> 0UL then
                            let offset = (block <<< 6) + int64 bit

                            let parts =
                                match s.Multi.TryGetValue offset with
                                | true, n -> n
                                | _ -> 1

                            offset, parts
            ]

    let assigned (ledger: Ledger) =
        ledger.Partitions |> Array.map (fun s -> s.TopicPartition) |> List.ofArray

    // The owned ledger's steps: the same state changes as the functions above, written in place.

    /// Delivers into the ledger an OwnedLedger owns (ring written in place).
    let internal deliverOwned (position: Position) (ledger: Ledger) =
        deliverWith
            true
            (fun i s' ->
                ledger.SetAt(i, s')

                Ok {
                    Position = position
                    Epoch = s'.Epoch
                })
            position
            ledger

    /// Applies `change` to an open token in the ledger an OwnedLedger owns.
    let inline private changeOwned (token: Token) (ledger: Ledger) ([<InlineIfLambda>] change: int -> int) =
        changeWith true (fun i s' -> ledger.SetAt(i, s')) () token ledger change

    let internal forkOwned (parts: int) (token: Token) (ledger: Ledger) =
        forkWith (changeOwned token ledger) parts token

    let internal completeOwned (token: Token) (ledger: Ledger) =
        changeOwned token ledger (fun current -> current - 1)

/// <summary>A ledger one owner updates in place: the answers of Ledger's functions, without a new
/// value per deliver and complete and without keeping older versions (a runtime's partition loop
/// never goes back to one). Not thread-safe.</summary>
[<Sealed>]
type internal OwnedLedger() =
    // Only this object holds it: assign and revoke replace it (new arrays), deliver and complete
    // write its partition states and rings in place.
    let mutable ledger = Ledger.empty

    member _.Assign(tp: TopicPartition, startOffset: int64) =
        ledger <- Ledger.assign tp startOffset ledger

    member _.Revoke(tp: TopicPartition) = ledger <- Ledger.revoke tp ledger
    member _.Deliver(position: Position) = Ledger.deliverOwned position ledger
    member _.Complete(token: Token) = Ledger.completeOwned token ledger
    member _.Fork(parts: int, token: Token) = Ledger.forkOwned parts token ledger
    member _.Epoch(tp: TopicPartition) = Ledger.epoch tp ledger
    member _.CommitPoint(tp: TopicPartition) = Ledger.commitPoint tp ledger
    member _.CommitPoints = Ledger.commitPoints ledger
    member _.OpenCount(tp: TopicPartition) = Ledger.openCount tp ledger
    member _.OpenOffsets(tp: TopicPartition) = Ledger.openOffsets tp ledger
    member _.Assigned = Ledger.assigned ledger
