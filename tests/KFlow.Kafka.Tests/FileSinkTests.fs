// Tests for src/KFlow.Kafka/FileSink.fs: files appear under their final name only complete (never a
// partial write, whether the write is in progress, fails midway or races a reader); replays replace.
module KFlow.Kafka.Tests.FileSinkTests

open System
open System.IO
open System.Text
open System.Threading
open System.Threading.Tasks
open Expecto
open KFlow.Kafka

/// A fresh temporary directory, deleted on dispose.
type private Scratch() =
    let dir =
        Directory.CreateDirectory(Path.Combine(Path.GetTempPath(), $"kflow-filesink-{Guid.NewGuid():N}"))

    member _.Path(name: string) = Path.Combine(dir.FullName, name)

    member _.Files =
        Directory.GetFiles dir.FullName
        |> Array.map (Path.GetFileName >> nonNull)
        |> Array.sort

    interface IDisposable with
        member _.Dispose() = dir.Delete true

let private text (s: string) = Encoding.UTF8.GetBytes s

let private wait (t: Task) =
    if not (t.Wait(TimeSpan.FromSeconds 30.)) then
        failtest "The write did not finish within 30 s."

let private writesAndCleansUp =
    testCase "writes the contents under the final name and leaves no temporary file"
    <| fun () ->
        use scratch = new Scratch()
        wait (FileSink.writeAllBytes (scratch.Path "a.bin") (text "hello"))
        Expect.equal (File.ReadAllText(scratch.Path "a.bin")) "hello" "the contents"
        Expect.equal scratch.Files [| "a.bin" |] "only the final file"

let private replaces =
    testCase "a replay replaces the existing file with the new contents"
    <| fun () ->
        use scratch = new Scratch()
        wait (FileSink.writeAllBytes (scratch.Path "a.bin") (text "first version, longer"))
        wait (FileSink.writeAllBytes (scratch.Path "a.bin") (text "second"))

        Expect.equal
            (File.ReadAllText(scratch.Path "a.bin"))
            "second"
            "the new contents, nothing left of the old"

        Expect.equal scratch.Files [| "a.bin" |] "only the final file"

let private failedWrite =
    testCase
        "a write failing midway faults, keeps the previous file under the final name and leaves no temporary file"
    <| fun () ->
        use scratch = new Scratch()
        wait (FileSink.writeAllBytes (scratch.Path "a.bin") (text "previous"))

        let crashing (stream: Stream) : Task = task {
            do! stream.WriteAsync(text "partial new conte", 0, 17)
            failwith "crash in the middle of the object"
        }

        let write = FileSink.writeAtomically (scratch.Path "a.bin") crashing
        Expect.throwsT<AggregateException> (fun () -> wait write) "the write faults"
        Expect.equal (File.ReadAllText(scratch.Path "a.bin")) "previous" "the previous file is untouched"
        Expect.equal scratch.Files [| "a.bin" |] "the temporary file is gone"

let private inProgress =
    testCase
        "while a write is in progress the partial contents are in a temporary file, never under the final name"
    <| fun () ->
        use scratch = new Scratch()
        let halfWritten = TaskCompletionSource()
        let proceed = TaskCompletionSource()

        let slow (stream: Stream) : Task = task {
            do! stream.WriteAsync(text "first half|", 0, 11)
            do! stream.FlushAsync()
            halfWritten.SetResult()
            do! proceed.Task
            do! stream.WriteAsync(text "second half", 0, 11)
        }

        let write = FileSink.writeAtomically (scratch.Path "obj.json") slow
        wait halfWritten.Task
        Expect.isFalse (File.Exists(scratch.Path "obj.json")) "nothing under the final name yet"

        match scratch.Files with
        | [| temp |] ->
            Expect.isTrue (FileSink.isTemporary temp) $"'{temp}' is named as a temporary file"
            Expect.notEqual temp "obj.json" "not the final name"
        | files -> failtestf "Expected one temporary file, found %A" files

        proceed.SetResult()
        wait write
        Expect.equal (File.ReadAllText(scratch.Path "obj.json")) "first half|second half" "complete"
        Expect.equal scratch.Files [| "obj.json" |] "only the final file"

let private readerRace =
    testCase "a reader polling the final name while it is rewritten only ever sees complete files"
    <| fun () ->
        use scratch = new Scratch()
        let path = scratch.Path "big.bin"
        let size = 256 * 1024
        let versions = 30
        use stop = new CancellationTokenSource()
        let seen = ref 0
        let torn = Collections.Concurrent.ConcurrentQueue<int>()

        let reader =
            Task.Run(fun () ->
                while not stop.IsCancellationRequested do
                    try
                        let bytes = File.ReadAllBytes path

                        if bytes.Length <> size || bytes |> Array.exists (fun b -> b <> bytes[0]) then
                            torn.Enqueue bytes.Length

                        seen.Value <- seen.Value + 1
                    with :? FileNotFoundException ->
                        ())

        for v in 1..versions do
            wait (FileSink.writeAllBytes path (Array.create size (byte v)))

        stop.Cancel()
        wait reader
        Expect.isEmpty torn "no read saw a partial or mixed file"
        Expect.isGreaterThan seen.Value 0 "the reader read the file"
        Expect.equal (File.ReadAllBytes path) (Array.create size (byte versions)) "the last version"

let private sinkWrite =
    testCase
        "the sink's write names each value's file, creates the directory, and completes once it is on disk"
    <| fun () ->
        use scratch = new Scratch()

        let write =
            FileSink.writeBytes (fun (name: string, _) -> scratch.Path $"objects/{name}") snd

        for name, contents in [ "x.txt", "one"; "y.txt", "two" ] do
            wait (write (name, text contents))

        Expect.equal (File.ReadAllText(scratch.Path "objects/x.txt")) "one" "x"
        Expect.equal (File.ReadAllText(scratch.Path "objects/y.txt")) "two" "y"

let tests =
    testList "FileSink" [ writesAndCleansUp; replaces; failedWrite; inProgress; readerRace; sinkWrite ]
