// A persistent radix ring of 64-offset bitmaps: the ledger's store of open offsets, sized by the open
// window rather than by absolute offsets, with path-copying updates (O(log16 window)).
namespace KFlow

/// A persistent radix trie of 64-bit masks used as a ring: block b (offsets 64b .. 64b+63) sits at
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

    /// A copy of the path to a slot with the slot's mask replaced; empty nodes collapse to null.
    let rec set (node: obj) (level: int) (slot: int64) (mask: uint64) : obj =
        if isNull node && mask = 0UL then
            null
        elif level = 0 then
            let a =
                if isNull node then
                    Array.zeroCreate<uint64> Width
                else
                    (node :?> uint64[]).Clone() :?> uint64[]

            a.[int (slot &&& DigitMask)] <- mask
            if mask = 0UL && allZero a then null else box a
        else
            let a =
                if isNull node then
                    Array.zeroCreate<obj> Width
                else
                    (node :?> obj[]).Clone() :?> obj[]

            let i = digit slot level
            let child = set a.[i] (level - 1) slot mask
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
