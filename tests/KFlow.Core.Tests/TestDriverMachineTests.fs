// Model-based test of the test driver (STYLE 15b) with FsCheck.Experimental's state machine: feeds,
// sink answers, revokes, assigns and crashes on a source-to-sink pipe, compared with a naive model.
// The namespace is experimental in FsCheck 3; if its API moves, only this file changes.
module KFlow.Core.Tests.TestDriverMachineTests

open System.Threading.Tasks
open FsCheck
open FsCheck.FSharp
open FsCheck.Experimental
open Expecto
open KFlow

/// A pending write in the model: its id, partition, offset and the assignment it was made in.
type PendingWrite = {
    Id: int
    Partition: int
    Offset: int64
    Assignment: int
}

/// The naive model of a driver running source -> sink with Manual sinks and AutoCommit.
type DriverModel = {
    /// Assigned partitions and their next offset to read.
    Next: Map<int, int64>
    /// Assignment counter per partition (bumped by assign and crash).
    Assignment: Map<int, int>
    /// Offsets delivered and not completed in the current assignment.
    Open: Map<int, Set<int64>>
    /// Where the current assignment started (its stored commit point then).
    Start: Map<int, int64>
    /// The last offset delivered in the current assignment.
    Last: Map<int, int64>
    /// Stored commit points.
    Stored: Map<int, int64>
    Pending: PendingWrite list
    Calls: int
    Written: int
}

let private partitions = 2
let private tp p = TopicPartition.create "m" p

let private livePoint p (m: DriverModel) =
    match Map.tryFind p m.Open with
    | Some o when not o.IsEmpty -> o.MinimumElement
    | _ ->
        match Map.tryFind p m.Last with
        | Some l -> l + 1L
        | None -> m.Start[p]

/// AutoCommit: the live commit point of every assigned partition is stored.
let private store (m: DriverModel) = {
    m with
        Stored = (m.Stored, m.Next) ||> Map.fold (fun s p _ -> Map.add p (livePoint p m) s)
}

let private assignModel p (m: DriverModel) =
    let from = Map.tryFind p m.Stored |> Option.defaultValue 0L

    store {
        m with
            Next = Map.add p from m.Next
            Assignment = Map.add p ((Map.tryFind p m.Assignment |> Option.defaultValue 0) + 1) m.Assignment
            Open = Map.add p Set.empty m.Open
            Start = Map.add p from m.Start
            Last = Map.remove p m.Last
    }

let private initial =
    ({
        Next = Map.empty
        Assignment = Map.empty
        Open = Map.empty
        Start = Map.empty
        Last = Map.empty
        Stored = Map.empty
        Pending = []
        Calls = 0
        Written = 0
     },
     [ 0 .. partitions - 1 ])
    ||> List.fold (fun m p -> assignModel p m)

/// The driver under test, held in a cell because FsCheck's machine mutates its actual object.
[<NoEquality; NoComparison>]
type DriverCell = {
    mutable Driver: TestDriver<int, Sunk>
}

let private newDriver () =
    let pipe = Pipe.source<int> |> Pipe.sink "db" (fun (_: int) -> Task.CompletedTask)

    let d =
        (TestDriver.create
            {
                TestDriver.options with
                    SinkMode = Manual
            }
            pipe,
         [ 0 .. partitions - 1 ])
        ||> List.fold (fun d p -> TestDriver.assign (tp p) d)

    { Driver = d }

/// The model and the driver agree on stored commit points, open offsets, pending and written writes.
let private agree (cell: DriverCell, m: DriverModel) =
    let d = cell.Driver

    let driverStored = [ for p in 0 .. partitions - 1 -> TestDriver.committed (tp p) d ]

    let modelStored = [
        for p in 0 .. partitions - 1 -> Map.tryFind p m.Stored |> Option.defaultValue 0L
    ]

    let driverOpen = [
        for p in 0 .. partitions - 1 -> Ledger.openCount (tp p) (TestDriver.ledger d)
    ]

    let modelOpen = [
        for p in 0 .. partitions - 1 ->
            if m.Next.ContainsKey p then
                (Map.tryFind p m.Open |> Option.defaultValue Set.empty).Count
            else
                0
    ]

    let stored = (driverStored = modelStored)
    let openCounts = (driverOpen = modelOpen)
    let driverPending = TestDriver.pending d |> List.map (fun c -> c.Id)
    let pending = (driverPending = (m.Pending |> List.map (fun w -> w.Id)))
    let written = (TestDriver.written "db" d: int list).Length = m.Written

    let assigned =
        TestDriver.assigned d = (m.Next |> Map.keys |> Seq.sort |> Seq.map tp |> List.ofSeq)

    (stored && openCounts && pending && written && assigned)
    |> Prop.label (
        sprintf
            "driver: committed %A, pending %A, written %d, assigned %A\nmodel: %A"
            [ for p in 0 .. partitions - 1 -> TestDriver.committed (tp p) d ]
            (TestDriver.pending d |> List.map (fun c -> c.Id))
            (TestDriver.written "db" d: int list).Length
            (TestDriver.assigned d)
            m
    )

/// An operation: its model step and the same step on the driver (which may read the model after the
/// step, e.g. for the offset the test chose to feed), then the comparison.
let private op
    name
    pre
    (model: DriverModel -> DriverModel)
    (act: DriverModel -> TestDriver<int, Sunk> -> TestDriver<int, Sunk>)
    =
    StateMachine.operationWithPrecondition name pre model (fun (cell: DriverCell, m) ->
        cell.Driver <- act m cell.Driver
        agree (cell, m))

let private feed p gap =
    op
        (sprintf "feed %d (gap %d)" p gap)
        (fun m -> m.Next.ContainsKey p)
        (fun m ->
            let offset = m.Next[p] + int64 gap
            let id = m.Calls + 1

            store {
                m with
                    Next = Map.add p (offset + 1L) m.Next
                    Open = Map.add p (m.Open[p].Add offset) m.Open
                    Last = Map.add p offset m.Last
                    Pending =
                        m.Pending
                        @ [
                            {
                                Id = id
                                Partition = p
                                Offset = offset
                                Assignment = m.Assignment[p]
                            }
                        ]
                    Calls = id
            })
        (fun m d -> TestDriver.feed (Message.create (tp p) m.Last[p] "k" (int m.Last[p])) d)

/// The pending write at index k (modulo their number), in request order.
let private chosen k (m: DriverModel) = m.Pending[k % m.Pending.Length]

let private answer k ok =
    op
        (sprintf "%s pending #%d" (if ok then "succeed" else "fail") k)
        (fun m -> not m.Pending.IsEmpty)
        (fun m ->
            let w = chosen k m

            let m = {
                m with
                    Pending = m.Pending |> List.filter (fun x -> x.Id <> w.Id)
            }

            if not ok then
                m
            else
                let current =
                    m.Next.ContainsKey w.Partition && m.Assignment[w.Partition] = w.Assignment

                let m = { m with Written = m.Written + 1 }

                if current then
                    store {
                        m with
                            Open = Map.add w.Partition (m.Open[w.Partition].Remove w.Offset) m.Open
                    }
                else
                    m)
        (fun _ d ->
            let calls = TestDriver.pending d
            let id = calls[k % calls.Length].Id

            if ok then
                TestDriver.succeed id d
            else
                TestDriver.fail id "down" d)

let private revoke p =
    op
        (sprintf "revoke %d" p)
        (fun m -> m.Next.ContainsKey p)
        (fun m ->
            let m = store m

            {
                m with
                    Next = Map.remove p m.Next
                    Open = Map.remove p m.Open
                    Last = Map.remove p m.Last
            })
        (fun _ d -> TestDriver.revoke (tp p) d)

let private assign p =
    op (sprintf "assign %d" p) (fun m -> not (m.Next.ContainsKey p)) (assignModel p) (fun _ d ->
        TestDriver.assign (tp p) d)

let private crash =
    op
        "crash"
        (fun _ -> true)
        (fun m ->
            let m = { m with Pending = [] }
            (m, m.Next |> Map.keys |> List.ofSeq) ||> List.fold (fun m p -> assignModel p m))
        (fun _ d -> TestDriver.crash d)

let private machine =
    { new Machine<DriverCell, DriverModel>() with
        member _.Setup =
            StateMachine.setup newDriver (fun () -> initial) |> Gen.constant |> Arb.fromGen

        member _.Next _ =
            let p = Gen.choose (0, partitions - 1)
            let k = Gen.choose (0, 4)

            Gen.frequency [
                6, Gen.map2 feed p (Gen.frequency [ 3, Gen.constant 0; 1, Gen.choose (1, 3) ])
                5, Gen.map (fun k -> answer k true) k
                1, Gen.map (fun k -> answer k false) k
                1, Gen.map revoke p
                2, Gen.map assign p
                1, Gen.constant crash
            ]
    }

let tests =
    testList "TestDriver machine" [
        testPropertyWithConfig
            {
                FsCheckConfig.defaultConfig with
                    maxTest = 200
                    endSize = 40
            }
            "the driver agrees with a naive model under feeds, answers, revokes, assigns and crashes"
        <| StateMachine.toProperty machine
    ]
