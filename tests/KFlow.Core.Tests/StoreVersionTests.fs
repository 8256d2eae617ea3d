// Tests for src/KFlow.Core/StoreVersion.fs: versions of a mutable store by rerooting read back what
// they held, whichever version was written last, and a reverted diff leaves the store as it was.
module KFlow.Core.Tests.StoreVersionTests

open System.Collections.Generic
open Expecto
open FsCheck
open FsCheck.FSharp
open KFlow

/// A store of four int slots and a dictionary, with its versions; the model keeps each version's
/// contents as immutable values.
type private Store() =
    member val Slots = Array.zeroCreate<int> 4
    member val Table = Dictionary<int, int>()

/// Writes `(slot, value)` pairs to the store as version `v` holds it; returns the new version.
let private write (store: Store) (v: StoreVersion) (writes: (int * int) list) =
    StoreVersion.reroot v
    let mutable changes: Change = null

    let record (change: Change) =
        change.Next <- changes
        changes <- change

    for slot, value in writes do
        let slot = abs slot % 4
        record (SlotChange(store.Slots, slot, store.Slots[slot]))
        store.Slots[slot] <- value

        // Odd values also write the table: set under the slot, or remove it for negative values.
        match store.Table.TryGetValue slot with
        | true, old when value < 0 ->
            record (EntryChange(store.Table, slot, ValueSome old))
            store.Table.Remove slot |> ignore
        | found, old when value % 2 <> 0 ->
            record (EntryChange(store.Table, slot, (if found then ValueSome old else ValueNone)))
            store.Table[slot] <- value
        | _ -> ()

    StoreVersion.advance changes v

/// What the store holds as version `v` holds it.
let private read (store: Store) (v: StoreVersion) =
    StoreVersion.reroot v
    List.ofArray store.Slots, store.Table |> Seq.map (fun kv -> kv.Key, kv.Value) |> Seq.sort |> List.ofSeq

/// The model of one write list applied to contents.
let private model (slots: int list, table: (int * int) list) (writes: (int * int) list) =
    ((Array.ofList slots, Map.ofList table), writes)
    ||> List.fold (fun (slots, table) (slot, value) ->
        let slot = abs slot % 4
        let slots = Array.copy slots
        slots[slot] <- value

        let table =
            if value < 0 && table.ContainsKey slot then
                Map.remove slot table
            elif value % 2 <> 0 then
                Map.add slot value table
            else
                table

        slots, table)
    |> fun (slots, table) -> List.ofArray slots, Map.toList table

let tests =
    testList "StoreVersion" [
        testProperty "every version reads back what it held, whichever version was written from"
        <| fun (steps: (int * (int * int) list) list) ->
            let store = Store()
            let start = StoreVersion()
            let versions = ResizeArray [ start, read store start ]

            for pick, writes in steps do
                let from, contents = versions[abs pick % versions.Count]
                let v = write store from writes
                versions.Add(v, model contents writes)

            // Read them back in an order unlike the one they were written in.
            [ for i in versions.Count - 1 .. -2 .. 0 -> i ]
            @ [ for i in 0..2 .. versions.Count - 1 -> i ]
            |> List.forall (fun i ->
                let v, contents = versions[i]
                read store v = contents)

        test "a version with no change stays the current one" {
            let store = Store()
            let v = StoreVersion()
            Expect.isTrue (obj.ReferenceEquals(write store v [], v)) "no new version for no change"
        }

        test "reverting a diff leaves the store as it was, and the version stays current" {
            let store = Store()
            let v = write store (StoreVersion()) [ 0, 5; 1, 6 ]
            let before = read store v
            let first = SlotChange(store.Slots, 0, store.Slots[0])
            store.Slots[0] <- 99
            let second = EntryChange(store.Table, 0, ValueSome store.Table[0])
            second.Next <- first
            store.Table.Remove 0 |> ignore
            StoreVersion.revert second
            Expect.equal (read store v) before "both writes are undone"
            Expect.isNull v.Newer "the version is still current"
        }
    ]
