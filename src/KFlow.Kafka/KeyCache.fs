// The key strings of one partition loop's messages, decoded once per distinct key while it recurs:
// each delivered message's key was decoded to a new string (~40 bytes a message in bench (c)).
namespace KFlow.Kafka

open System
open System.Text

/// <summary>A direct-mapped cache of decoded message keys (UTF-8 bytes to string), for one partition
/// loop (one thread; no locks). A key whose slot holds the same bytes gets the string decoded before
/// (no allocation); any other is decoded and takes the slot. Holds at most <c>size</c> keys (their
/// byte arrays and strings), so a partition with ever new keys costs one lookup each and keeps
/// nothing more.</summary>
[<Sealed>]
type internal KeyCache(size: int) =
    do
        if size < 1 || size &&& (size - 1) <> 0 then
            invalidArg "size" $"The key cache's size must be a power of 2 (got {size})."

    let keys: byte[][] = Array.zeroCreate size
    let strings: string[] = Array.zeroCreate size
    let mask = size - 1

    /// A cache of 4,096 keys (64 KB of slots).
    new() = KeyCache 4096

    /// The key as a string: "" for a null key, the cached string when the key's bytes were seen
    /// last in its slot, else a new one (then cached).
    member _.Decode(key: byte[] | null) : string =
        match key with
        | null -> ""
        | key when key.Length = 0 -> ""
        | key ->
            let span = ReadOnlySpan key
            let mutable hash = HashCode()
            hash.AddBytes span
            let slot = hash.ToHashCode() &&& mask
            let cached = keys[slot]

            if not (isNull cached) && span.SequenceEqual(ReadOnlySpan cached) then
                strings[slot]
            else
                let text = Encoding.UTF8.GetString key
                keys[slot] <- key
                strings[slot] <- text
                text
