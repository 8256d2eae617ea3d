// One chunk of an object split across several Kafka messages, as AssembleChunks reads it from a value:
// a plain C# record, so the facade's surface holds no F# type.
namespace KFlow.Hosting;

/// <summary>One chunk of an object split across messages (see <see cref="Flow{T}.AssembleChunks"/>).</summary>
/// <typeparam name="TPart">The chunk's content.</typeparam>
/// <param name="Id">The object's id, shared by its chunks.</param>
/// <param name="Index">The chunk's index, 0 ≤ Index &lt; Count.</param>
/// <param name="Count">How many chunks the object has (≥ 1).</param>
/// <param name="Part">The chunk's content.</param>
public sealed record Chunk<TPart>(string Id, int Index, int Count, TPart Part);
