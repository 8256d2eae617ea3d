// Tests for src/KFlow.Core/Chunks.fs: objects split across messages are emitted once, complete,
// holding every chunk's token; incomplete ones never let the commit point pass them.
module KFlow.Core.Tests.ChunksTests

open System
open System.Threading.Tasks
open Expecto
open KFlow

let private tp = TopicPartition.create "t" 0

let private manual = {
    TestDriver.options with
        SinkMode = Manual
}

/// Values are "id/index/count/part".
let private chunkOf (s: string) =
    match s.Split '/' with
    | [| id; index; count; part |] -> {
        Id = id
        Index = int index
        Count = int count
        Part = part
      }
    | _ -> failwithf "not a chunk: %s" s

let private assembled () =
    Pipe.source<string>
    |> Pipe.assembleChunks chunkOf (String.concat "")
    |> Pipe.sink "objects" (fun (_: string) -> Task.CompletedTask)

let private feed values d =
    d
    |> TestDriver.feedAll (values |> List.map (fun (o, v) -> Message.create tp o "k" v))

/// The assembling pipe started with automatic sinks on tp, fed `values`.
let private startedWith values =
    assembled () |> TestDriver.start |> TestDriver.assign tp |> feed values

let tests =
    testList "Chunks" [
        test
            "an object is emitted once all its chunks arrived, parts in index order, holding every chunk's token" {
            let d =
                assembled ()
                |> TestDriver.create manual
                |> TestDriver.assign tp
                |> feed [ 0L, "a/1/3/B"; 1L, "b/0/1/x"; 2L, "a/2/3/C"; 3L, "a/0/3/A" ]

            let calls = TestDriver.pending d

            Expect.equal
                (calls |> List.map (fun c -> unbox<string> c.Value))
                [ "x"; "ABC" ]
                "b at once, a when complete"

            Expect.equal
                (calls[1].Tokens |> List.map (fun t -> t.Position.Offset))
                [ 0L; 2L; 3L ]
                "a's chunks"

            let d = d |> TestDriver.succeed 2
            Expect.equal (TestDriver.committed tp d) 1L "offset 1 (b) still open"
            let d = d |> TestDriver.succeed 1
            Expect.equal (TestDriver.committed tp d) 4L "all done"
        }
        test "a repeated chunk is dropped and its offset completes" {
            let d = startedWith [ 0L, "a/0/2/A"; 1L, "a/0/2/A" ]

            Expect.equal (Ledger.openCount tp (TestDriver.ledger d)) 1 "only the first chunk is held"
            let d = d |> feed [ 2L, "a/1/2/B" ]
            Expect.equal (TestDriver.written "objects" d) [ "AB" ] "assembled once"
            Expect.equal (TestDriver.committed tp d) 3L "all done"
        }
        test "an incomplete object dropped on shutdown keeps its offsets open, so it is read again" {
            let d = startedWith [ 0L, "a/0/2/A" ] |> TestDriver.flush

            Expect.equal (TestDriver.committed tp d) 0L "not committed"
            let d = d |> TestDriver.crash |> TestDriver.replay |> feed [ 1L, "a/1/2/B" ]
            Expect.equal (TestDriver.written "objects" d) [ "AB" ] "assembled after the restart"
            Expect.equal (TestDriver.committed tp d) 2L "done"
        }
        test "a chunk index out of range makes the stage fail and leaves the offset open" {
            let d = startedWith [ 0L, "a/5/2/A" ]

            Expect.equal
                (TestDriver.failures d |> List.map (fun f -> f.Stage))
                [ "assembleChunks" ]
                "failure reported"

            Expect.equal (TestDriver.committed tp d) 0L "open"
        }
        test "pending counts the incomplete objects of a running stage" {
            let stage = Chunks.assemble chunkOf (String.concat "")

            let env o v =
                Envelope.ofMessage
                    {
                        Position = Position.create tp o
                        Epoch = 1
                    }
                    (Message.create tp o "k" v)

            let instance, _ =
                Stage.start stage
                |> Stage.step DateTimeOffset.UnixEpoch (Message(env 0L "a/0/2/A"))

            let instance, _ =
                instance |> Stage.step DateTimeOffset.UnixEpoch (Message(env 1L "b/0/2/A"))

            Expect.equal (Chunks.pending instance) 2 "two incomplete objects"
        }
    ]
