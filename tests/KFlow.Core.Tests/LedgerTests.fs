// Tests for src/KFlow.Core/Ledger.fs: the ledger against the reference model of LedgerModel.fs,
// its invariants as properties, hand-checked examples, and the doc example.
module KFlow.Core.Tests.LedgerTests

open System
open System.IO
open Expecto
open KFlow
open KFlow.Testing
open KFlow.Core.Tests.LedgerModel

let private modelBased (commands: Command list) =
    replay commands (fun i command _ after outcomes ->
        for real, expected in outcomes do
            if real <> expected then
                failtestf "step %d (%A): outcome %A, the model's %A" i command real expected

        let seen, expected = observe after.Ledger, observeModel after.Model

        if seen <> expected then
            Expect.equal seen expected (sprintf "step %d (%A): the ledger looks like the model" i command))

let private neverPassesOpen (commands: Command list) =
    replay commands (fun i command _ after _ ->
        for KeyValue(tp, p) in after.Model.Partitions do
            match Ledger.commitPoint tp after.Ledger with
            | ValueNone -> failtestf "step %d (%A): %O is assigned but has no commit point" i command tp
            | ValueSome point ->
                for KeyValue(offset, _) in p.Open do
                    if offset < point then
                        failtestf
                            "step %d (%A): commit point %d of %O passes open offset %d"
                            i
                            command
                            point
                            tp
                            offset)

let private neverBackwards (commands: Command list) =
    replay commands (fun i command before after _ ->
        for tp in Generators.partitions do
            match Ledger.epoch tp before.Ledger, Ledger.epoch tp after.Ledger with
            | ValueSome e, ValueSome e' when e = e' ->
                let point = Ledger.commitPoint tp before.Ledger |> ValueOption.get
                let point' = Ledger.commitPoint tp after.Ledger |> ValueOption.get

                if point' < point then
                    failtestf
                        "step %d (%A): commit point of %O moved back from %d to %d"
                        i
                        command
                        tp
                        point
                        point'
            | _ -> ())

let private persistent (commands: Command list) =
    let snapshots = ResizeArray()

    replay commands (fun i command before after _ ->
        snapshots.Add(i, after.Ledger, observe after.Ledger)
        // The same command on the same old value again must give the same answer.
        let again, _ =
            step
                {
                    before with
                        Issued = ResizeArray before.Issued
                }
                command

        if observe again.Ledger <> observe after.Ledger then
            failtestf "step %d (%A): applying a command twice to one value gives two answers" i command)

    for i, ledger, seen in snapshots do
        if observe ledger <> seen then
            Expect.equal
                (observe ledger)
                seen
                (sprintf "the value after step %d is unchanged by later steps" i)

let private refusesWithErrors (commands: Command list) =
    let mutable final = Unchecked.defaultof<Run>
    replay commands (fun _ _ _ after _ -> final <- after)

    for token in final.Issued do
        // Complete until refused: an open token has finitely many parts.
        let rec drain ledger n =
            match Ledger.complete token ledger with
            | Ok ledger' when n < 10 -> drain ledger' (n + 1)
            | Ok _ -> failtestf "%A completed more than 10 times" token
            | Error e -> e

        let tp = token.Position.TopicPartition

        let expected =
            match Ledger.epoch tp final.Ledger with
            | ValueNone -> NotAssigned tp
            | ValueSome e when e <> token.Epoch -> StaleEpoch(token, e)
            | ValueSome _ -> NotOpen token

        let actual = drain final.Ledger 0

        if actual <> expected then
            failtestf "%A is finally refused with %A, expected %A" token actual expected

/// A ledger under test through its operations: the value ledger (kept in a cell) or an owned one.
[<NoEquality; NoComparison>]
type private Subject = {
    Deliver: Position -> Token
    Complete: Token -> unit
    CommitPoint: TopicPartition -> int64 voption
    OpenCount: TopicPartition -> int
    OpenOffsets: TopicPartition -> (int64 * int) list
}

/// The value ledger with `tp` assigned at 0, behind a Subject.
let private valueSubject (tp: TopicPartition) =
    let mutable ledger = Ledger.empty |> Ledger.assign tp 0L

    {
        Deliver =
            fun position ->
                let struct (l, token) = Expect.ok (Ledger.deliver position ledger) "deliver"
                ledger <- l
                token
        Complete = fun token -> ledger <- Expect.ok (Ledger.complete token ledger) "complete"
        CommitPoint = fun tp -> Ledger.commitPoint tp ledger
        OpenCount = fun tp -> Ledger.openCount tp ledger
        OpenOffsets = fun tp -> Ledger.openOffsets tp ledger
    }

/// An owned ledger with `tp` assigned at 0, behind a Subject.
let private ownedSubject (tp: TopicPartition) =
    let owned = OwnedLedger()
    owned.Assign(tp, 0L)

    {
        Deliver = fun position -> Expect.ok (owned.Deliver position) "deliver"
        Complete = fun token -> Expect.ok (owned.Complete token) "complete"
        CommitPoint = owned.CommitPoint
        OpenCount = owned.OpenCount
        OpenOffsets = owned.OpenOffsets
    }

/// The benchmark's workload in miniature: a window of open offsets completed in random order while
/// new ones (with gaps) arrive, long enough for the ring to wrap around and to grow, compared with the
/// model after every step.
let private slidingWindowOf (subject: TopicPartition -> Subject) (seed: int) (window: FsCheck.PositiveInt) =
    let window = 1 + window.Get % 400
    let random = Random seed
    let tp = Generators.partitions.[0]
    let tokens = ResizeArray<Token>()
    let ledger = subject tp
    let mutable model = Model.empty |> Model.assign tp 0L
    let mutable offset = 0L

    for step in 1..6_000 do
        if tokens.Count >= window || (tokens.Count > 0 && random.Next 3 = 0) then
            let i = random.Next tokens.Count
            let token = tokens.[i]
            tokens.[i] <- tokens.[tokens.Count - 1]
            tokens.RemoveAt(tokens.Count - 1)
            ledger.Complete token
            model <- Expect.ok (Model.complete token model) "model complete"
        else
            let position = Position.create tp offset
            tokens.Add(ledger.Deliver position)
            model <- Expect.ok (Model.deliver position model) "model deliver" |> fst

            offset <-
                offset
                + (if random.Next 20 = 0 then
                       1L + int64 (random.Next 3_000)
                   else
                       1L)

        let expected = Model.commitPoint tp model |> Option.get

        if
            ledger.CommitPoint tp <> ValueSome expected
            || ledger.OpenCount tp <> tokens.Count
        then
            failtestf
                "step %d: commit point %A, open %d; the model's %d, open %d"
                step
                (ledger.CommitPoint tp)
                (ledger.OpenCount tp)
                expected
                tokens.Count

        if step % 500 = 0 then
            let _, _, _, _, modelOpen = (observeModel model).PerPartition.[0]
            Expect.equal (ledger.OpenOffsets tp) modelOpen (sprintf "step %d: the open offsets" step)

/// What can be observed of an owned ledger, as `observe` gives it of a value.
let private observeOwned (owned: OwnedLedger) = {
    CommitPoints = owned.CommitPoints
    Assigned = owned.Assigned
    PerPartition = [
        for tp in Generators.partitions ->
            tp,
            owned.Epoch tp |> ValueOption.toOption,
            owned.CommitPoint tp |> ValueOption.toOption,
            owned.OpenCount tp,
            owned.OpenOffsets tp
    ]
}

/// The ledger calls a command makes on the value ledger (see LedgerModel.step), made on an owned one
/// given the run before the command; returns their outcomes.
let private stepOwned (owned: OwnedLedger) (before: Run) (command: Command) : Outcome list =
    let tpOf i = Generators.partitions.[i]

    let pickToken pick =
        if before.Issued.Count = 0 then
            None
        else
            Some before.Issued.[pick % before.Issued.Count]

    let onToken (r: Result<unit, LedgerError>) : Outcome list = [ r |> Result.map (fun () -> None) ]

    let deliver (position: Position) : Outcome =
        owned.Deliver position |> Result.map Some

    match command with
    | Assign(p, start) ->
        owned.Assign(tpOf p, start)
        []
    | Revoke p ->
        owned.Revoke(tpOf p)
        []
    | Deliver(p, gap) ->
        let next = Model.nextAtLeast (tpOf p) before.Model
        [ deliver (Position.create (tpOf p) (max 0L (next + gap))) ]
    | DeliverRun(p, count, stride) ->
        let tp = tpOf p
        let mutable model = before.Model

        [
            for i in 0 .. count - 1 do
                let gap = if i = 0 then 0L else stride - 1L
                let position = Position.create tp (max 0L (Model.nextAtLeast tp model + gap))

                match Model.deliver position model with
                | Ok(m, _) -> model <- m
                | Error _ -> ()

                deliver position
        ]
    | Command.Complete pick ->
        match pickToken pick with
        | None -> []
        | Some token -> onToken (owned.Complete token)
    | Command.Fork(pick, parts) ->
        match pickToken pick with
        | None -> []
        | Some token -> onToken (owned.Fork(parts, token))
    | CompleteShifted(pick, shift) ->
        match pickToken pick with
        | None -> []
        | Some issued ->
            onToken (
                owned.Complete {
                    issued with
                        Position =
                            Position.create
                                issued.Position.TopicPartition
                                (max 0L (issued.Position.Offset + shift))
                }
            )
    | CompleteForged(p, offset, epoch) ->
        onToken (
            owned.Complete {
                Position = Position.create (tpOf p) offset
                Epoch = epoch
            }
        )

/// An owned ledger fed the same commands as the value ledger answers every call alike and looks the
/// same after every command.
let private ownedAgrees (commands: Command list) =
    let owned = OwnedLedger()

    (start (), List.indexed (prelude @ commands))
    ||> List.fold (fun run (i, command) ->
        let ownedOutcomes = stepOwned owned run command
        let run', outcomes = step run command
        let valueOutcomes = outcomes |> List.map fst

        if ownedOutcomes <> valueOutcomes then
            failtestf
                "step %d (%A): the owned ledger answered %A, the value %A"
                i
                command
                ownedOutcomes
                valueOutcomes

        let seen, expected = observeOwned owned, observe run'.Ledger

        if seen <> expected then
            Expect.equal
                seen
                expected
                (sprintf "step %d (%A): the owned ledger looks like the value" i command)

        run')
    |> ignore

let tp0 = TopicPartition.create "orders" 0

let private deliverAt offset ledger =
    Expect.ok (Ledger.deliver (Position.create tp0 offset) ledger) (sprintf "deliver %d" offset)

/// A token like `token` (same epoch) for another offset of tp0: one the ledger never handed out.
let private forged (token: Token) offset = {
    token with
        Position = Position.create tp0 offset
}

let private completed token ledger =
    Expect.ok (Ledger.complete token ledger) (sprintf "complete %O" token.Position)

//[ledger-example]
let example () =
    let orders = TopicPartition.create "orders" 0
    let ledger = Ledger.empty |> Ledger.assign orders 100L

    // Offsets 100, 101 and 105 arrive (102..104 are a gap: compaction or transaction markers).
    let deliver offset ledger =
        match Ledger.deliver (Position.create orders offset) ledger with
        | Ok(struct (ledger, token)) -> ledger, token
        | Error e -> failwithf "refused: %A" e

    let ledger, t100 = deliver 100L ledger
    let ledger, t101 = deliver 101L ledger
    let ledger, t105 = deliver 105L ledger

    // 101 became two outputs; 105 was filtered out; 100 was sunk.
    let ledger =
        ledger
        |> Ledger.fork 2 t101
        |> Result.bind (Ledger.complete t105)
        |> Result.bind (Ledger.complete t100)
        |> Result.defaultWith (failwithf "refused: %A")

    let before = Ledger.commitPoint orders ledger // ValueSome 101L: 101 has two open parts

    let after =
        ledger
        |> Ledger.complete t101
        |> Result.bind (Ledger.complete t101)
        |> Result.map (Ledger.commitPoint orders) // Ok(ValueSome 106L)

    let again = Ledger.complete t100 ledger // Error(NotOpen t100): already completed
    before, after, again
//[/ledger-example]

let tests =
    testList "Ledger" [
        testList "properties" [
            testPropertyWithConfig
                Config.fsCheck
                "agrees with a naive reference model after every command"
                modelBased
            testPropertyWithConfig
                { Config.fsCheck with maxTest = 30 }
                "agrees with the model over a long sliding window of random completions"
                (slidingWindowOf valueSubject)
            testPropertyWithConfig Config.fsCheck "commit point never passes an open offset" neverPassesOpen
            testPropertyWithConfig
                Config.fsCheck
                "commit point never moves backwards within one assignment"
                neverBackwards
            testPropertyWithConfig
                Config.fsCheck
                "old values are unchanged by operations on newer ones"
                persistent
            testPropertyWithConfig
                Config.fsCheck
                "refuses stale, double and unknown completions with error values, never exceptions"
                refusesWithErrors
            testPropertyWithConfig
                Config.fsCheck
                "an owned ledger answers every call as the value ledger does and looks the same after each"
                ownedAgrees
            testPropertyWithConfig
                { Config.fsCheck with maxTest = 30 }
                "an owned ledger agrees with the model over a long sliding window of random completions"
                (slidingWindowOf ownedSubject)
        ]
        testList "examples" [
            test "a partition with nothing delivered commits its start offset" {
                let ledger = Ledger.empty |> Ledger.assign tp0 42L
                Expect.commitPointIs tp0 42L ledger "nothing delivered"
                Expect.equal (Ledger.openCount tp0 ledger) 0 "nothing open"
            }
            test "commit point skips offset gaps and waits for the first open offset" {
                let ledger = Ledger.empty |> Ledger.assign tp0 0L
                let struct (ledger, t0) = deliverAt 0L ledger
                let struct (ledger, t3) = deliverAt 3L ledger
                let struct (ledger, t7) = deliverAt 7L ledger
                Expect.commitPointIs tp0 0L ledger "0 is open"
                let ledger = completed t3 ledger
                Expect.commitPointIs tp0 0L ledger "0 is still open"
                let ledger = completed t0 ledger
                Expect.commitPointIs tp0 7L ledger "1..6 are a gap or done; 7 is open"
                let ledger = completed t7 ledger
                Expect.commitPointIs tp0 8L ledger "one past the last delivered"
            }
            test "offsets open on both sides of a block boundary after a start on one are all tracked" {
                // The tail block is that of the last delivered offset: here 63 then 64 (a new block),
                // 64 itself starting the assignment.
                let ledger = Ledger.empty |> Ledger.assign tp0 64L
                Expect.commitPointIs tp0 64L ledger "nothing delivered"
                let struct (ledger, t64) = deliverAt 64L ledger
                let struct (ledger, t127) = deliverAt 127L ledger
                let struct (ledger, t128) = deliverAt 128L ledger
                let struct (ledger, t300) = deliverAt 300L ledger
                let ledger = completed t128 ledger
                let ledger = completed t64 ledger
                Expect.commitPointIs tp0 127L ledger "127 is open in the ring"
                Expect.equal (Ledger.openOffsets tp0 ledger) [ 127L, 1; 300L, 1 ] "127 and 300 open"
                let ledger = completed t127 ledger
                Expect.commitPointIs tp0 300L ledger "300 is open in the tail"
                let ledger = completed t300 ledger
                Expect.commitPointIs tp0 301L ledger "one past the last delivered"
                let struct (ledger, t301) = deliverAt 301L ledger
                Expect.commitPointIs tp0 301L ledger "301 open in the emptied tail block"
                let ledger = completed t301 ledger
                Expect.equal (Ledger.openCount tp0 ledger) 0 "nothing open"
            }
            test "forking into zero parts completes the offset" {
                let ledger = Ledger.empty |> Ledger.assign tp0 5L
                let struct (ledger, t5) = deliverAt 5L ledger
                let ledger = Expect.ok (Ledger.fork 0 t5 ledger) "fork 0"
                Expect.commitPointIs tp0 6L ledger "5 is done"
                Expect.equal (Ledger.openCount tp0 ledger) 0 "nothing open"
            }
            test "forking into n parts completes the offset only after n completions" {
                let ledger = Ledger.empty |> Ledger.assign tp0 10L
                let struct (ledger, t10) = deliverAt 10L ledger
                let struct (ledger, t11) = deliverAt 11L ledger
                let ledger = Expect.ok (Ledger.fork 3 t10 ledger) "fork 3"
                let ledger = completed t11 ledger
                Expect.commitPointIs tp0 10L ledger "10 has 3 open parts"
                let ledger = completed t10 ledger
                let ledger = completed t10 ledger
                Expect.commitPointIs tp0 10L ledger "10 has 1 open part"
                Expect.equal (Ledger.openOffsets tp0 ledger) [ 10L, 1 ] "one part left"
                let ledger = completed t10 ledger
                Expect.commitPointIs tp0 12L ledger "all parts done"
                Expect.ledgerError (NotOpen t10) (Ledger.complete t10 ledger) "a fourth completion"
            }
            test "completing twice is refused with NotOpen" {
                let ledger = Ledger.empty |> Ledger.assign tp0 0L
                let struct (ledger, t0) = deliverAt 0L ledger
                let ledger = completed t0 ledger
                Expect.ledgerError (NotOpen t0) (Ledger.complete t0 ledger) "second completion"
            }
            test "completing an offset that was never delivered is refused with NotOpen" {
                let ledger = Ledger.empty |> Ledger.assign tp0 0L
                let struct (ledger, t0) = deliverAt 0L ledger
                let struct (ledger, _) = deliverAt 2L ledger

                let gap = forged t0 1L
                let future = forged t0 3L
                Expect.ledgerError (NotOpen gap) (Ledger.complete gap ledger) "a gap offset"
                Expect.ledgerError (NotOpen future) (Ledger.complete future ledger) "a future offset"
            }
            test "after a revoke, completions are refused with NotAssigned, after re-assign with StaleEpoch" {
                let ledger = Ledger.empty |> Ledger.assign tp0 0L
                let struct (ledger, t0) = deliverAt 0L ledger
                let revoked = Ledger.revoke tp0 ledger
                Expect.ledgerError (NotAssigned tp0) (Ledger.complete t0 revoked) "revoked"
                let reassigned = Ledger.assign tp0 0L revoked
                let epoch = Ledger.epoch tp0 reassigned |> ValueOption.get
                Expect.notEqual epoch t0.Epoch "a new epoch"
                Expect.ledgerError (StaleEpoch(t0, epoch)) (Ledger.complete t0 reassigned) "stale"
                Expect.commitPointIs tp0 0L reassigned "the new assignment starts over"
            }
            test "a gap offset that aliases an open offset across a huge gap is refused with NotOpen" {
                let ledger = Ledger.empty |> Ledger.assign tp0 0L
                let struct (ledger, t0) = deliverAt 0L ledger
                let struct (ledger, _) = deliverAt 1_000_000L ledger

                let aliased = forged t0 1_024L

                Expect.ledgerError
                    (NotOpen aliased)
                    (Ledger.complete aliased ledger)
                    "1024 was never delivered"

                Expect.commitPointIs tp0 0L ledger "0 is open"
            }
            test "delivering below the next expected offset is refused with OutOfOrder" {
                let ledger = Ledger.empty |> Ledger.assign tp0 0L
                let struct (ledger, _) = deliverAt 5L ledger
                let position = Position.create tp0 5L
                Expect.ledgerError (OutOfOrder(position, 6L)) (Ledger.deliver position ledger) "again"
            }
            test "forking into a negative number of parts is refused with InvalidParts" {
                let ledger = Ledger.empty |> Ledger.assign tp0 0L
                let struct (ledger, t0) = deliverAt 0L ledger
                Expect.ledgerError (InvalidParts(t0, -1)) (Ledger.fork -1 t0 ledger) "negative"
            }
            test "an old ledger value still gives its old answers after newer operations" {
                let ledger = Ledger.empty |> Ledger.assign tp0 0L
                let struct (old, t0) = deliverAt 0L ledger
                let newer = completed t0 old
                Expect.commitPointIs tp0 1L newer "newer"
                Expect.commitPointIs tp0 0L old "old"
                Expect.equal (Ledger.openCount tp0 old) 1 "old still has 0 open"
                Expect.commitPointIs tp0 1L (completed t0 old) "the old value can be completed again"
            }
            test "a window far wider than one block and a huge gap keep the first open offset" {
                let mutable ledger = Ledger.empty |> Ledger.assign tp0 0L
                let tokens = ResizeArray()

                for offset in [ 0L .. 4999L ] @ [ 1_000_000_000_000L ] do
                    let struct (l, t) = deliverAt offset ledger
                    ledger <- l
                    tokens.Add t

                for t in Seq.rev tokens do
                    if t.Position.Offset <> 0L then
                        ledger <- completed t ledger

                Expect.commitPointIs tp0 0L ledger "0 is still open"
                ledger <- completed tokens.[0] ledger
                Expect.commitPointIs tp0 1_000_000_000_001L ledger "one past the last delivered"
            }
            test "commit points list every assigned partition in topic-partition order" {
                let b = TopicPartition.create "b" 0
                let a1 = TopicPartition.create "a" 1

                let ledger =
                    Ledger.empty
                    |> Ledger.assign b 7L
                    |> Ledger.assign a1 3L
                    |> Ledger.assign tp0 0L

                Expect.equal (Ledger.commitPoints ledger) [ a1, 3L; b, 7L; tp0, 0L ] "sorted"
                Expect.equal (Ledger.assigned ledger) [ a1; b; tp0 ] "sorted"
            }
        ]
        testList "docs" [
            test "the example in docs/ledger.md gives the commit points its comments state" {
                let before, after, again = example ()
                Expect.equal before (ValueSome 101L) "101 has two open parts"
                Expect.equal after (Ok(ValueSome 106L)) "all done"

                match again with
                | Error(NotOpen t) -> Expect.equal t.Position.Offset 100L "100 was completed"
                | other -> failtestf "expected NotOpen, got %A" other
            }
            testCase "docs/ledger.md shows the example exactly as LedgerTests.fs compiles it"
            <| fun () ->
                DocSnippets.expectPageShowsRegions
                    "fsharp"
                    "docs/ledger.md"
                    "tests/KFlow.Core.Tests/LedgerTests.fs"
        ]
    ]
