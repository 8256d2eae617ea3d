// Stage latency: the histogram kflow.stage.duration (ms) of meter "KFlow", tagged with the workflow
// and the stage name, recorded for each message's step of a pure stage, each async call and each
// sink write (retries in place included). Nothing is measured while no listener enables it.
namespace KFlow.Kafka

open System.Collections.Generic
open System.Diagnostics
open System.Diagnostics.Metrics
open System.Threading.Tasks
open KFlow

/// The runtime's stage latency histogram.
[<RequireQualifiedAccess>]
module StageTiming =
    /// The meter's name, shared with the C# facade's observable instruments: "KFlow".
    [<Literal>]
    let MeterName = "KFlow"

    /// The histogram's name.
    [<Literal>]
    let InstrumentName = "kflow.stage.duration"

    let private meter = new Meter(MeterName)

    let private duration =
        meter.CreateHistogram<float>(
            InstrumentName,
            "ms",
            "Time a stage took for one message (pure stages), one call (async maps) or one write (sinks)."
        )

    /// Whether a listener is recording the histogram.
    let internal enabled () = duration.Enabled

    /// Records the time since the Stopwatch timestamp `started` for `stage` of `workflow`.
    let internal record (workflow: string) (stage: string) (started: int64) =
        duration.Record(
            Stopwatch.GetElapsedTime(started).TotalMilliseconds,
            KeyValuePair("workflow", box workflow),
            KeyValuePair("stage", box stage)
        )

    /// The pipe with its pure stages timed.
    let internal pipe (workflow: string) (pipe: Pipe<'i, 'o>) =
        Pipe.timed enabled (record workflow) pipe

    let private whenDone (workflow: string) (stage: string) (started: int64) (t: Task) =
        if t.IsCompleted then
            record workflow stage started
        else
            t.ContinueWith(
                (fun (_: Task) -> record workflow stage started),
                TaskContinuationOptions.ExecuteSynchronously
            )
            |> ignore

    /// `inner` timed from its start to the end of the task it returns, as `stage` of `workflow`.
    let private timedCall<'t when 't :> Task>
        (workflow: string)
        (stage: string)
        (inner: obj -> 't)
        (value: obj)
        : 't =
        if enabled () then
            let started = Stopwatch.GetTimestamp()
            let t = inner value

            if not (isNull (t :> Task)) then
                whenDone workflow stage started t

            t
        else
            inner value

    /// Starts a sink write with `start`, timed from its start to its end while a listener records
    /// the histogram (nothing is allocated per write while none does).
    let internal startWrite (workflow: string) (start: SinkRequest -> Task) (request: SinkRequest) : Task =
        if enabled () then
            let started = Stopwatch.GetTimestamp()
            let t = start request

            if not (isNull t) then
                whenDone workflow request.Sink started t

            t
        else
            start request

    /// An async call timed from its start to its end. Unchanged while no listener records the
    /// histogram, as `write`.
    let internal call (workflow: string) (request: AsyncRequest) =
        if enabled () then
            {
                request with
                    Run = timedCall workflow request.Stage request.Run
            }
        else
            request
