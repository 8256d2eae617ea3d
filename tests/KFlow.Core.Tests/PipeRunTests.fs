// Tests for src/KFlow.Core/PipeRun.fs: the interpreter is persistent (old runs stay valid, which the
// driver and properties rely on) and delivers broadcast events in pipe order.
module KFlow.Core.Tests.PipeRunTests

open System
open Expecto
open KFlow

let private tp = TopicPartition.create "t" 0
let private at = DateTimeOffset.UnixEpoch

let private message offset (value: 'a) =
    let m = Message.create tp offset (string value) value
    Message(Envelope.box (Envelope.ofMessage { Position = m.Position; Epoch = 1 } m))

let private values (effects: Effects) =
    effects.Outputs |> List.map (fun e -> unbox<int list> e.Value)

let tests =
    testList "PipeRun" [
        test "pushing into an older run leaves the newer one untouched and vice versa" {
            let pipe =
                Pipe.source<int>
                |> Pipe.demux string (fun sub -> sub |> Pipe.aggregate (Buffer.count 2))

            let run0 = PipeRun.start pipe
            let run1, _ = run0 |> PipeRun.push at (message 0L 7)
            let _, fromOld = run0 |> PipeRun.push at (message 1L 7)
            let _, fromNew = run1 |> PipeRun.push at (message 1L 7)
            Expect.isEmpty fromOld.Outputs "the old run had nothing buffered"
            Expect.equal (values fromNew) [ [ 7; 7 ] ] "the new run had 7 buffered"

            Expect.equal
                (PipeRun.liveSubstreams run0, PipeRun.liveSubstreams run1)
                (0, 1)
                "both runs unchanged"
        }
        test "a flush reaches each stage after what the stages before it emitted on that flush" {
            let pipe =
                Pipe.source<int>
                |> Pipe.aggregate (Buffer.count 10)
                |> Pipe.map List.sum
                |> Pipe.aggregate (Buffer.count 10)

            let run, _ = PipeRun.start pipe |> PipeRun.push at (message 0L 1)
            let run, _ = run |> PipeRun.push at (message 1L 2)
            let _, flushed = run |> PipeRun.push at Flush

            Expect.equal
                (values flushed)
                [ [ 3 ] ]
                "the first buffer's sum reached the second before it flushed"

            Expect.equal
                (flushed.Outputs
                 |> List.collect (fun e -> e.Tokens)
                 |> List.map (fun t -> t.Position.Offset))
                [ 0L; 1L ]
                "tokens merged"
        }
        test "a sink request names the demux substream it comes from, outermost key first" {
            let write (_: int) = Threading.Tasks.Task.CompletedTask

            let pipe =
                Pipe.source<int>
                |> Pipe.demux (fun v -> string (v % 2)) (fun sub ->
                    sub
                    |> Pipe.demux (fun v -> string (v % 3)) (fun sub -> sub |> Pipe.sink "inner" write))

            let _, effects = PipeRun.start pipe |> PipeRun.push at (message 0L 5)
            Expect.equal (effects.Sinks |> List.map _.Substream) [ "1\u001f2" ] "both keys, outermost first"

            let flat = Pipe.source<int> |> Pipe.sink "flat" write
            let _, effects = PipeRun.start flat |> PipeRun.push at (message 0L 5)
            Expect.equal (effects.Sinks |> List.map _.Substream) [ "" ] "no demux, no substream"
        }
        test "resuming a call that is not in flight is refused" {
            let run =
                PipeRun.startWith Defer (Pipe.source<int> |> Pipe.mapAsync 1 Threading.Tasks.Task.FromResult)

            Expect.throwsT<ArgumentException>
                (fun () -> run |> PipeRun.resume at 1 (Ok(1 :> obj)) |> ignore)
                "unknown call"
        }
    ]
