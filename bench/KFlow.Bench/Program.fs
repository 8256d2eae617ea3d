// The benchmark runner: `KFlow.Bench [--only NAME] [--messages N]` runs the named benchmark (or
// all), prints its table and merges its figures into artifacts/bench-results.json.
module KFlow.Bench.Program

open System

/// The benchmarks by name, for an input of `messages` messages.
let benchmarks (messages: int) = [
    "ledger", LedgerBench.run
    "pipe-core", PipeCoreBench.run messages
    "runtime", RuntimeBench.run messages
    "map-filter", RuntimeBench.runMapFilter messages
    "demux-aggregate", RuntimeBench.runDemuxAggregate messages
    "async-demux", RuntimeBench.runAsyncDemux messages
    "backlog-memory", RuntimeBench.runBacklog messages
    "pg-sink", PgSinkBench.run
]

/// The runner's arguments.
type private Arguments = { Only: string option; Messages: int }

let rec private parse (args: Arguments) =
    function
    | [] -> Ok args
    | "--only" :: name :: rest -> parse { args with Only = Some name } rest
    | "--messages" :: n :: rest ->
        match Int32.TryParse n with
        | true, n when n >= 1 -> parse { args with Messages = n } rest
        | _ -> Error(sprintf "--messages needs a positive whole number, not '%s'." n)
    | other :: _ -> Error(sprintf "Unrecognised argument '%s'." other)

[<EntryPoint>]
let main argv =
    KFlow.Bench.GcTrace.start ()

    match List.ofArray argv with
    | [ "--backlog-child"; bootstrap; topic; ends ] -> RuntimeBench.backlogChild bootstrap topic ends
    | args ->
        let selected =
            parse
                {
                    Only = None
                    Messages = RuntimeBench.DefaultMessages
                }
                args
            |> Result.bind (fun a ->
                let all = benchmarks a.Messages

                match a.Only with
                | None ->
                    Ok(
                        all
                        |> List.filter (fun (n, _) ->
                            n <> "backlog-memory"
                            && n <> "async-demux"
                            && n <> "map-filter"
                            && n <> "demux-aggregate")
                    )
                | Some name ->
                    match all |> List.filter (fun (n, _) -> n = name) with
                    | [] -> Error(sprintf "Unknown benchmark '%s'." name)
                    | found -> Ok found)

        match selected with
        | Error message ->
            let names = benchmarks 0 |> List.map fst |> String.concat ", "

            eprintfn
                "%s\nusage: KFlow.Bench [--only NAME] [--messages N]   (benchmarks: %s; N default %d)"
                message
                names
                RuntimeBench.DefaultMessages

            2
        | Ok selected ->
            for name, run in selected do
                printfn "== %s" name
                let file = Results.merge (run ())
                printfn "\nFigures merged into %s" file

            0
