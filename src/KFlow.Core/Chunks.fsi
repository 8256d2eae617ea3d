// Objects split across several messages: the stage that waits for every chunk of an object and
// emits it once, holding the tokens of all its chunks.
namespace KFlow

/// One chunk of an object split across messages.
type Chunk<'p> = {
    /// The object's id, shared by its chunks.
    Id: string
    /// The chunk's index, 0 ≤ Index &lt; Count.
    Index: int
    /// How many chunks the object has (≥ 1).
    Count: int
    /// The chunk's content.
    Part: 'p
}

/// The assembling stage.
[<RequireQualifiedAccess>]
module Chunks =
    /// <summary>Collects the chunks of each object (read with <paramref name="chunkOf"/>) and, once all
    /// <c>Count</c> have arrived, emits <c>combine</c> of their parts in index order, holding every
    /// chunk's token.</summary>
    /// <remarks>A repeated chunk (same id and index) is dropped and its token completed. Incomplete
    /// objects are dropped on Flush, and on Revoked when they hold a chunk of that partition: their
    /// tokens stay open, so the commit point stays before them and they are read again after a
    /// restart. The chunks of one object are expected in one partition (one key). A chunk with an
    /// index outside 0..Count-1 makes the stage throw (its offset stays open).</remarks>
    val assemble: chunkOf: ('a -> Chunk<'p>) -> combine: ('p list -> 'b) -> Stage<'a, 'b>

    /// How many incomplete objects a running assemble stage holds (for tests of its memory bound).
    val pending: instance: StageInstance<'a, 'b> -> int
