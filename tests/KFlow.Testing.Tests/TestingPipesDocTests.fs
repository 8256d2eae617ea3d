// The examples of docs/testing-pipes.md, compiled and run here between //[name] and //[/name]
// markers, and a test that each fenced F# block of the doc equals its marked region.
module KFlow.Testing.Tests.TestingPipesDocTests

open System
open System.IO
open System.Threading.Tasks
open Expecto
open FsCheck
open FsCheck.FSharp
open KFlow
open KFlow.Testing

//[property-pipe]
let orders: Gen<Message<int> list> =
    Gen.listOf (
        Gen.map2
            (fun customer amount -> Message.create (TopicPartition.create "orders" 0) 0L customer amount)
            (Gen.elements [ "alice"; "bob"; "carol" ])
            (Gen.choose (1, 100))
    )

let totals =
    Pipe.source<int>
    |> Pipe.filter (fun amount -> amount > 10)
    |> Pipe.mapEnvelope (fun e -> e.Key, e.Value)
    |> Pipe.demux fst (fun customer -> customer |> Pipe.aggregate (Buffer.count 5))
    |> Pipe.sink "totals" (fun (_: (string * int) list) -> Task.CompletedTask)
//[/property-pipe]

//[property-expecto]
let orderTests =
    testList "Orders" [
        testPropertyWithConfig
            {
                FsCheckConfig.defaultConfig with
                    maxTest = 200
            }
            "no order is lost or committed unfinished, whatever crashes"
        <| PipeProperties.crashReplay totals orders
    ]
//[/property-expecto]

let tests =
    testList "Testing pipes guide" [
        test "a test driver run: feed, commit points, written batches" {
            //[driver-basic]
            let tp = TopicPartition.create "orders" 0

            let pipe =
                Pipe.source<int>
                |> Pipe.aggregate (Buffer.count 3)
                |> Pipe.sink "db" (fun (batch: int list) -> Task.CompletedTask)

            let driver =
                TestDriver.start pipe
                |> TestDriver.assign tp
                |> TestDriver.feedAll [ for o in 0L .. 6L -> Message.create tp o "k" (int o) ]

            Expect.equal (TestDriver.written "db" driver) [ [ 0; 1; 2 ]; [ 3; 4; 5 ] ] "two batches written"
            Expect.equal (TestDriver.committed tp driver) 6L "offset 6 is still buffered, so 6 is committed"
        //[/driver-basic]
        }
        test "manual sink answers, a crash and a replay" {
            let tp = TopicPartition.create "orders" 0

            let pipe =
                Pipe.source<int>
                |> Pipe.aggregate (Buffer.count 3)
                |> Pipe.sink "db" (fun (batch: int list) -> Task.CompletedTask)

            //[driver-manual]
            let manual = {
                TestDriver.options with
                    SinkMode = Manual
            }

            let d =
                TestDriver.create manual pipe
                |> TestDriver.assign tp
                |> TestDriver.feedAll [ for o in 0L .. 5L -> Message.create tp o "k" (int o) ]

            Expect.equal (TestDriver.pending d |> List.map (fun c -> c.Id)) [ 1; 2 ] "two writes pending"
            Expect.equal (TestDriver.committed tp d) 0L "nothing written yet"

            let d = d |> TestDriver.succeed 2
            Expect.equal (TestDriver.committed tp d) 0L "offsets 0-2 are still open"

            let d = d |> TestDriver.fail 1 "db down"
            Expect.equal (TestDriver.committed tp d) 0L "a failed write completes nothing"
            //[/driver-manual]

            //[driver-crash]
            let d = d |> TestDriver.crash |> TestDriver.replay |> TestDriver.succeedAll

            Expect.equal
                (TestDriver.written "db" d)
                [ [ 3; 4; 5 ]; [ 0; 1; 2 ]; [ 3; 4; 5 ] ]
                "replayed from the commit point 0: 3-5 written twice (at least once)"

            Expect.equal (TestDriver.committed tp d) 6L "everything done"
        //[/driver-crash]
        }
        test "clock, revoke and the reports" {
            let tp = TopicPartition.create "orders" 0

            //[driver-clock]
            let aged =
                Pipe.source<string>
                |> Pipe.aggregate (Buffer.age (TimeSpan.FromSeconds 5.0))
                |> Pipe.sink "db" (fun (batch: string list) -> Task.CompletedTask)

            let d =
                TestDriver.start aged
                |> TestDriver.assign tp
                |> TestDriver.feed (Message.create tp 0L "k" "a")
                |> TestDriver.advance (TimeSpan.FromSeconds 2.0)

            Expect.equal (TestDriver.committed tp d) 0L "still buffered after 2 s"

            let d = d |> TestDriver.advance (TimeSpan.FromSeconds 3.0)
            Expect.equal (TestDriver.committed tp d) 1L "written at 5 s"

            let d = d |> TestDriver.feed (Message.create tp 4L "k" "b") |> TestDriver.revoke tp
            Expect.equal (TestDriver.committed tp d) 5L "a revoke flushes the buffer, then commits"
            Expect.equal (TestDriver.assigned d) [] "no partition left"

            Expect.equal
                (TestDriver.commitHistory d |> List.map (fun c -> c.Offset))
                [ 0L; 1L; 4L; 5L ]
                "every stored commit point, oldest first (offsets 1-3 do not exist: 4 was the first open one)"
        //[/driver-clock]
        }
        test "the ready-made property, with options" {
            //[property-check]
            Check.QuickThrowOnFailure(PipeProperties.crashReplay totals orders)

            let harsh = {
                PipeProperties.options with
                    CrashProbability = 0.2
                    SinkFailureProbability = 0.3
                    Partitions = Some 6
            }

            Check.QuickThrowOnFailure(PipeProperties.crashReplayWith harsh totals orders)
        //[/property-check]
        }
        orderTests
        testCase "every F# block of the doc equals its marked region here"
        <| fun () ->
            DocSnippets.expectPageShowsRegions
                "fsharp"
                "docs/testing-pipes.md"
                "tests/KFlow.Testing.Tests/TestingPipesDocTests.fs"
    ]
