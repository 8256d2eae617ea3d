// A radix ring of 64-offset bitmaps: the ledger's store of open offsets, sized by the open window
// rather than by absolute offsets. Updated in place, its versions kept by rerooting (StoreVersion.fs).
namespace KFlow

open System.Threading

/// A radix trie of 64-bit masks used as a ring: block b (offsets 64b .. 64b+63) sits at
/// slot b mod 16^depth. Level-0 nodes are uint64[16]; higher levels are obj[16]; null is an empty
/// subtree, and a node whose children are all empty is itself null (so a search never walks empties).
module internal Ring =
    [<Literal>]
    let Bits = 4

    [<Literal>]
    let Width = 16

    [<Literal>]
    let DigitMask = 15L

    let inline digit (slot: int64) (level: int) =
        int ((slot >>> (Bits * level)) &&& DigitMask)

    /// The mask at a slot (0 when absent).
    let rec get (node: obj) (level: int) (slot: int64) : uint64 =
        if isNull node then
            0UL
        elif level = 0 then
            (node :?> uint64[]).[int (slot &&& DigitMask)]
        else
            get (node :?> obj[]).[digit slot level] (level - 1) slot

    let private allZero (a: uint64[]) =
        let mutable i = 0

        while i < Width && a.[i] = 0UL do
            i <- i + 1

        i = Width

    let private allNull (a: obj[]) =
        let mutable i = 0

        while i < Width && isNull a.[i] do
            i <- i + 1

        i = Width

    /// <summary>Replaces the mask at a slot in place and returns the root (null when the ring is empty;
    /// an emptied node becomes null). Each write to a node that existed before is recorded in `log`
    /// (null: no other version sees the nodes); new nodes are filled before they are linked.</summary>
    let rec set (log: ChangeLog) (node: obj) (level: int) (slot: int64) (mask: uint64) : obj =
        if isNull node && mask = 0UL then
            null
        elif level = 0 then
            let j = int (slot &&& DigitMask)

            if isNull node then
                let a = Array.zeroCreate<uint64> Width
                a.[j] <- mask
                box a
            else
                let a = node :?> uint64[]

                if a.[j] <> mask then
                    if not (isNull log) then
                        log.Record(SlotChange(a, j, a.[j]))

                    a.[j] <- mask

                if mask = 0UL && allZero a then null else box a
        else
            let i = digit slot level

            if isNull node then
                let a = Array.zeroCreate<obj> Width
                a.[i] <- set log null (level - 1) slot mask
                box a
            else
                let a = node :?> obj[]
                let child = set log a.[i] (level - 1) slot mask

                if not (obj.ReferenceEquals(child, a.[i])) then
                    if not (isNull log) then
                        log.Record(SlotChange(a, i, a.[i]))

                    a.[i] <- child

                if isNull child && allNull a then null else box a

    /// The first slot ≥ from holding a non-zero mask, in the subtree whose first slot is basis; -1 if none.
    /// Because empty subtrees are null, this is O(depth × Width).
    let rec firstFrom (node: obj) (level: int) (basis: int64) (from: int64) : int64 =
        if isNull node then
            -1L
        elif level = 0 then
            let a = node :?> uint64[]
            let mutable i = if from <= basis then 0 else int (from - basis)
            let mutable found = -1L

            while found < 0L && i < Width do
                if a.[i] <> 0UL then
                    found <- basis + int64 i

                i <- i + 1

            found
        else
            let a = node :?> obj[]
            let shift = Bits * level
            let mutable i = if from <= basis then 0 else int ((from - basis) >>> shift)
            let mutable found = -1L

            while found < 0L && i < Width do
                found <- firstFrom a.[i] (level - 1) (basis + (int64 i <<< shift)) from
                i <- i + 1

            found

    /// Calls f on every non-zero mask with its slot.
    let rec iter (f: int64 -> uint64 -> unit) (node: obj) (level: int) (basis: int64) =
        if not (isNull node) then
            if level = 0 then
                let a = node :?> uint64[]

                for i in 0 .. Width - 1 do
                    if a.[i] <> 0UL then
                        f (basis + int64 i) a.[i]
            else
                let a = node :?> obj[]
                let shift = Bits * level

                for i in 0 .. Width - 1 do
                    iter f a.[i] (level - 1) (basis + (int64 i <<< shift))

/// <summary>A version of one partition's ring: the ring's store (the lock shared by its versions, and
/// the log each write fills, reused: no log allocated per write) and the root this version has. A
/// ledger's partition holds one (null: an empty ring).</summary>
[<Sealed; AllowNullLiteral>]
type internal RingVersion(store: ChangeLog, root: obj) =
    inherit StoreVersion()
    member _.Store = store
    member _.Root = root

/// Reading and writing ring versions; each call holds the ring's lock and reroots it first.
[<RequireQualifiedAccess>]
module internal RingVersion =
    /// Runs `f` under the lock of a (non-null) version's ring, rerooted to that version.
    let inline rerooted (ring: RingVersion) ([<InlineIfLambda>] f: ChangeLog -> 'r) =
        let store = ring.Store
        let mutable locked = false

        try
            Monitor.Enter(store, &locked)
            StoreVersion.reroot ring
            f store
        finally
            if locked then
                Monitor.Exit store

    /// Runs `read` on the root of a version's ring (null for none), rerooted, under the ring's lock.
    let inline read (ring: RingVersion) ([<InlineIfLambda>] read: obj -> 'r) =
        if isNull ring then
            read null
        else
            rerooted ring (fun _ -> read ring.Root)

    /// The version with the mask at a slot replaced: written in place, `ring` becoming a diff to it
    /// (a new ring for null).
    let set (level: int) (slot: int64) (mask: uint64) (ring: RingVersion) =
        if isNull ring then
            RingVersion(ChangeLog(), Ring.set null null level slot mask)
        else
            rerooted ring (fun store ->
                store.Head <- null
                let root = Ring.set store ring.Root level slot mask
                let changes = store.Head
                store.Head <- null

                if isNull changes && obj.ReferenceEquals(root, ring.Root) then
                    ring
                else
                    let next = RingVersion(store, root)
                    ring.Diff <- changes
                    ring.Newer <- next
                    next)

    /// <summary>The version with the mask at a slot replaced, written in place and nothing recorded: for a
    /// ring whose versions only one owner sees and never goes back to (OwnedLedger). `ring` itself
    /// is returned when the root is the same node.</summary>
    let setInPlace (level: int) (slot: int64) (mask: uint64) (ring: RingVersion) =
        if isNull ring then
            RingVersion(ChangeLog(), Ring.set null null level slot mask)
        else
            let root = Ring.set null ring.Root level slot mask

            if obj.ReferenceEquals(root, ring.Root) then
                ring
            else
                RingVersion(ring.Store, root)

    /// A new ring (its own store) of the given root, built by Ring.set with no log.
    let fresh (root: obj) =
        if isNull root then null else RingVersion(ChangeLog(), root)
