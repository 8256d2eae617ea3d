// The examples of docs/concepts.md, compiled and run here. Each snippet sits between `//[name]` and
// `//[/name]`; the last test checks the page shows exactly these regions, so the docs cannot rot.
module KFlow.Core.Tests.ConceptsTests

open System
open System.IO
open System.Threading.Tasks
open Expecto
open KFlow
open KFlow.Testing

//[stage]
/// Passes a value on only when it differs from the previous one; a repeat is dropped, which
/// completes its token so the commit point can pass it.
let changes () : Stage<string, string> =
    Stage.create "changes" None (fun _now event previous ->
        match event with
        | Message e when Some e.Value = previous -> previous, Output.drop e
        | Message e -> Some e.Value, Output.emit e
        | _ -> previous, Output.none)
//[/stage]

//[pipe]
let pipe: Pipe<string, Sunk> =
    Pipe.source<string>
    |> Pipe.map (fun line -> line.Trim())
    |> Pipe.filter (fun line -> line <> "")
    |> Pipe.demux (fun line -> line.Substring(0, 1)) (fun sub -> sub |> Pipe.aggregate (Buffer.count 2))
    |> Pipe.sink "db" (fun (batch: string list) -> Task.CompletedTask)
//[/pipe]

let tests =
    testList "Concepts (docs)" [
        test "a user stage drops repeats, completing their tokens" {
            let tp = TopicPartition.create "orders" 0

            let d =
                Pipe.source<string>
                |> Pipe.via (changes ())
                |> TestDriver.start
                |> TestDriver.assign tp
                |> TestDriver.feedAll [
                    for o, v in [ 0L, "a"; 1L, "a"; 2L, "b" ] -> Message.create tp o "" v
                ]

            Expect.equal (TestDriver.outputs d |> List.map (fun e -> e.Value)) [ "a"; "b" ] "repeat dropped"
            Expect.equal (TestDriver.committed tp d) 3L "all finished"
        }
        test "the example pipe batches per key and commits what is sunk" {
            //[driver]
            let tp = TopicPartition.create "orders" 0

            let driver =
                TestDriver.start pipe
                |> TestDriver.assign tp
                |> TestDriver.feedAll [
                    Message.create tp 0L "" "a1"
                    Message.create tp 1L "" "  "
                    Message.create tp 2L "" "b1"
                    Message.create tp 3L "" "a2"
                ]
            // "a1" and "a2" went to the sink as one batch; the blank line was filtered out.
            Expect.equal (TestDriver.written "db" driver) [ [ "a1"; "a2" ] ] "one batch"
            // "b1" (offset 2) is still buffered in its substream: the commit point stops there.
            Expect.equal (TestDriver.committed tp driver) 2L "commit point"
            //[/driver]
            //[crash]
            // Crash: all state is lost, the buffered "b1" with it. Restarting from the commit point (2)
            // reads "b1" again, and "a2" too: it is written twice (at least once, never lost).
            let restarted =
                driver
                |> TestDriver.crash
                |> TestDriver.replay
                |> TestDriver.feed (Message.create tp 4L "" "b2")
                |> TestDriver.flush

            Expect.equal
                (TestDriver.written "db" restarted)
                [ [ "a1"; "a2" ]; [ "b1"; "b2" ]; [ "a2" ] ]
                "nothing lost"

            Expect.equal (TestDriver.committed tp restarted) 5L "all committed"
        //[/crash]
        }
        test "aggregate of 3 commits each batch only once it is sunk" {
            //[manual]
            let tp = TopicPartition.create "orders" 0

            let batches =
                Pipe.source<int>
                |> Pipe.aggregate (Buffer.count 3)
                |> Pipe.sink "db" (fun (batch: int list) -> Task.CompletedTask)

            let driver =
                batches
                |> TestDriver.create {
                    TestDriver.options with
                        SinkMode = Manual
                }
                |> TestDriver.assign tp
                |> TestDriver.feedAll [ for offset in 0L .. 6L -> Message.create tp offset "" (int offset) ]
            // Two batches wait for the sink; offset 6 is buffered. Nothing is committed yet.
            Expect.equal (TestDriver.committed tp driver) 0L "nothing sunk"
            let afterFirst = driver |> TestDriver.succeed 1
            Expect.equal (TestDriver.committed tp afterFirst) 3L "first batch sunk"
            let afterSecond = afterFirst |> TestDriver.succeed 2
            Expect.equal (TestDriver.committed tp afterSecond) 6L "second batch sunk"
        //[/manual]
        }
        testCase "docs/concepts.md shows exactly the marked regions of this file"
        <| fun () ->
            DocSnippets.expectPageShowsRegions
                "fsharp"
                "docs/concepts.md"
                "tests/KFlow.Core.Tests/ConceptsTests.fs"
    ]
