// Versions of a mutable store by rerooting (Baker; Conchon & Filliâtre's persistent arrays): the
// newest version owns the store, an older one is a diff leading back from a newer one. PipeRun and the
// ledger's ring use it.
namespace KFlow

open System.Collections.Generic

/// <summary>One write to a store, recorded so that it can be undone. <c>Swap</c> writes the value the
/// change holds and keeps the value it replaced: the same change undoes its write, and once swapped it
/// redoes it (a diff is turned around in place when a version is rerooted).</summary>
[<AbstractClass; AllowNullLiteral>]
type internal Change() =
    /// The change applied after this one in the same diff (null: the last).
    member val Next: Change = null with get, set
    /// Writes the held value and holds the value it replaced.
    abstract Swap: unit -> unit

/// A write to a slot of an array.
[<Sealed>]
type internal SlotChange<'t>(array: 't[], index: int, value: 't) =
    inherit Change()
    let mutable value = value

    override _.Swap() =
        let current = array[index]
        array[index] <- value
        value <- current

/// A write to an entry of a dictionary (ValueNone: the key is absent).
[<Sealed>]
type internal EntryChange<'k, 'v when 'k: equality>(table: Dictionary<'k, 'v>, key: 'k, value: 'v voption) =
    inherit Change()
    let mutable value = value

    override _.Swap() =
        let current =
            match table.TryGetValue key with
            | true, v -> ValueSome v
            | _ -> ValueNone

        match value with
        | ValueSome v -> table[key] <- v
        | ValueNone -> table.Remove key |> ignore

        value <- current

/// The changes one update records, newest first.
[<Sealed; AllowNullLiteral>]
type internal ChangeLog() =
    /// The newest change (null: none).
    member val Head: Change = null with get, set

    /// Records a write (before it is made).
    member this.Record(change: Change) =
        change.Next <- this.Head
        this.Head <- change

/// <summary>A version of a store. The current one has no Newer; an older one has a Newer and the Diff
/// (changes applied head first) that turns Newer's contents into its own. Old versions point to newer
/// ones, never back, so a version nobody holds is collected with its diff.</summary>
[<AllowNullLiteral>]
type internal StoreVersion() =
    member val internal Newer: StoreVersion = null with get, set
    member val internal Diff: Change = null with get, set

/// Rerooting and recording versions. The caller serialises every call on one store (a lock).
[<RequireQualifiedAccess>]
module internal StoreVersion =
    /// Applies a diff head first and returns it turned around (the diff that leads back).
    let turn (diff: Change) =
        let mutable change = diff
        let mutable back: Change = null

        while not (isNull change) do
            let next = change.Next
            change.Swap()
            change.Next <- back
            back <- change
            change <- next

        back

    /// Undoes changes recorded newest first (a push that failed half-way); nothing holds them after.
    let revert (newestFirst: Change) = turn newestFirst |> ignore

    /// <summary>Makes the store hold `version`'s contents: the diffs from the current version back to
    /// it are applied and turned around, so `version` becomes current. O(1) when it is current
    /// already; O(changes since) otherwise.</summary>
    let reroot (version: StoreVersion) =
        if not (isNull version.Newer) then
            let chain = Stack<StoreVersion>()
            let mutable v = version

            while not (isNull v.Newer) do
                chain.Push v
                v <- v.Newer

            // v is current; walk back to `version`, one diff at a time.
            while chain.Count > 0 do
                let older = chain.Pop()
                v.Diff <- turn older.Diff
                v.Newer <- older
                older.Diff <- null
                older.Newer <- null
                v <- older

    /// <summary>Records that the current version `current` became a new one through `changes`
    /// (recorded newest first): returns the new current version, `current` becoming a diff to it.
    /// With no change, `current` stays current and is returned.</summary>
    let advance (changes: Change) (current: StoreVersion) =
        if isNull changes then
            current
        else
            let next = StoreVersion()
            current.Diff <- changes
            current.Newer <- next
            next
